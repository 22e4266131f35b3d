//! The ledger: fhirlift's local state store, one SQLite file per migration.
//!
//! It records, per target server, what the server acknowledged, so that
//!
//! 1. a re-run skips the records whose content did not change (the delta
//!    check: [`Ledger::acknowledged`] against [`content_hash`]);
//! 2. a stopped run resumes after the prefix of every stream that is fully
//!    acknowledged (the low-water mark: [`Ledger::mark`]);
//! 3. rejected records can be retried ([`Ledger::rejected`]);
//! 4. `fhirlift status` can report ([`Ledger::status`]).
//!
//! One file may hold several targets (the server's base URL, `dry-run`,
//! `sandbox:<dir>`): every row carries its target, and a [`Ledger`] sees only
//! the rows of the target it was opened for.
//!
//! # Tables
//!
//! - `meta(version)`: one row, the schema version (2). A file written by a
//!   newer fhirlift is refused rather than misread; a version 1 file gains
//!   the `writer_*` columns (empty) when opened.
//! - `targets(id, target, last_run)`: the targets the file knows, with the
//!   start of their last run (RFC 3339, UTC). The other tables name a target
//!   by this `id`.
//! - `resources(target, resource_type, system, value, server_id, version,
//!   hash)`, keyed by (target, resource_type, system, value), `WITHOUT ROWID`:
//!   per identity (the first identifier of a resource), what the server
//!   acknowledged: its id, its version and the 128-bit hash of the content
//!   that was sent, as a 16-byte big-endian BLOB; and its writer
//!   (`writer_stream`, `writer_ordinal`): the record whose content it is, by
//!   its place in the source ([`Writer`]).
//! - `records(target, stream, key, state, was_done, provenance, reason)`,
//!   keyed by (target, stream, key), `WITHOUT ROWID`: how each source record
//!   ended, `done` (written, unchanged or skipped) or `rejected` (with its
//!   provenance as JSON and the reason). A done record clears an earlier
//!   reject; `was_done` remembers that a key was done once, so that
//!   `streams.done_count` counts distinct keys. A partial index holds the
//!   rejected rows only, for [`Ledger::rejected`] and the status counts.
//! - `streams(target, stream, mark, mark_records, pending, done_count,
//!   last_run)`, keyed by (target, stream), `WITHOUT ROWID`: the low-water
//!   mark (the provenance, as JSON, of the last record of the acknowledged
//!   prefix, and how many records are at or before it), the records in
//!   flight when the last run stopped, the number of distinct keys ever
//!   done, and the start of the last run that touched the stream.
//!
//! # Invariants
//!
//! - **One run per file.** The connection uses `locking_mode=EXCLUSIVE` and
//!   writes at open, so it holds the file's lock until it is dropped (or its
//!   process dies: the OS releases the lock). A second open fails within a
//!   fraction of a second with [`LedgerError::Open`]; it never waits.
//! - **Crash safety.** The file is in WAL mode with `synchronous=NORMAL`:
//!   a kill -9 loses nothing committed, and a power cut may lose the last
//!   few commits but never leaves the file inconsistent. That is enough:
//!   what a lost commit held (acknowledgements, and a mark that came with
//!   them) is simply sent again as the same idempotent writes. `FULL`
//!   (an fsync per commit) halved the rate of a first run and bought
//!   nothing fhirlift relies on.
//! - **Everything one [`Ledger::commit`] carries lands together or not at
//!   all.** The `acknowledge`, `record_*`, `set_mark`, `stream_finished` and
//!   `set_pending` calls only queue, in memory; `commit` writes the queue in
//!   one transaction. Dropping a `Ledger` (or a kill -9) loses the queue and
//!   nothing else.
//! - **A low-water mark is only ever written in the same transaction as the
//!   acknowledgements below it.** The caller queues a mark after the
//!   acknowledgements of every record at or before it; they commit together,
//!   so a mark on disk never points past an acknowledgement that is not.
//!   Clearing marks is always safe: it only moves a resume point back.
//! - **The delta check sees the queue.** [`Ledger::acknowledged`] answers from
//!   the queued acknowledgements first, then from the file, so two records of
//!   one run writing the same identity compare against what was last
//!   acknowledged, committed or not. Every other read sees committed state.

pub mod claims;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fhirlift_core::transport::SampledIdentity;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

/// The schema version this fhirlift writes and reads.
pub const SCHEMA_VERSION: i64 = 2;

/// How long an open waits for another run's lock before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_millis(200);

/// What to do when another run holds the file.
const HELD_HINT: &str =
    "another fhirlift run holds it: wait for it, or use --state to point at another file";

const SCHEMA: &str = "
CREATE TABLE meta(version INTEGER NOT NULL);
CREATE TABLE targets(
    id INTEGER PRIMARY KEY,
    target TEXT NOT NULL UNIQUE,
    last_run TEXT
);
CREATE TABLE resources(
    target INTEGER NOT NULL,
    resource_type TEXT NOT NULL,
    system TEXT NOT NULL,
    value TEXT NOT NULL,
    server_id TEXT,
    version TEXT,
    hash BLOB NOT NULL,
    writer_stream TEXT,
    writer_ordinal INTEGER,
    PRIMARY KEY(target, resource_type, system, value)
) WITHOUT ROWID;
CREATE TABLE records(
    target INTEGER NOT NULL,
    stream TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL CHECK(state IN ('done', 'rejected')),
    was_done INTEGER NOT NULL DEFAULT 0,
    provenance TEXT,
    reason TEXT,
    PRIMARY KEY(target, stream, key)
) WITHOUT ROWID;
CREATE INDEX records_rejected ON records(target, stream, key) WHERE state = 'rejected';
CREATE TABLE streams(
    target INTEGER NOT NULL,
    stream TEXT NOT NULL,
    mark TEXT,
    mark_records INTEGER,
    pending INTEGER NOT NULL DEFAULT 0,
    done_count INTEGER NOT NULL DEFAULT 0,
    last_run TEXT,
    PRIMARY KEY(target, stream)
) WITHOUT ROWID;
";

const SELECT_RESOURCE: &str = "SELECT server_id, version, hash, writer_stream, writer_ordinal FROM resources \
     WHERE target = ?1 AND resource_type = ?2 AND system = ?3 AND value = ?4";
const UPSERT_RESOURCE: &str = "INSERT INTO resources(target, resource_type, system, value, server_id, version, hash, writer_stream, writer_ordinal) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
     ON CONFLICT(target, resource_type, system, value) DO UPDATE SET \
     server_id = excluded.server_id, version = excluded.version, hash = excluded.hash, \
     writer_stream = excluded.writer_stream, writer_ordinal = excluded.writer_ordinal";
/// Schema version 1 to 2: who last wrote each identity.
const UPGRADE_1_TO_2: &str = "ALTER TABLE resources ADD COLUMN writer_stream TEXT; \
     ALTER TABLE resources ADD COLUMN writer_ordinal INTEGER; \
     UPDATE meta SET version = 2;";
const SELECT_RECORD: &str =
    "SELECT state, was_done FROM records WHERE target = ?1 AND stream = ?2 AND key = ?3";
const INSERT_DONE: &str =
    "INSERT INTO records(target, stream, key, state, was_done) VALUES (?1, ?2, ?3, 'done', 1)";
const UPDATE_DONE: &str = "UPDATE records SET state = 'done', was_done = 1, provenance = NULL, reason = NULL \
     WHERE target = ?1 AND stream = ?2 AND key = ?3";
const INSERT_REJECTED: &str = "INSERT INTO records(target, stream, key, state, was_done, provenance, reason) \
     VALUES (?1, ?2, ?3, 'rejected', 0, ?4, ?5)";
const UPDATE_REJECTED: &str = "UPDATE records SET state = 'rejected', provenance = ?4, reason = ?5 \
     WHERE target = ?1 AND stream = ?2 AND key = ?3";
const TOUCH_STREAM: &str = "INSERT INTO streams(target, stream, last_run) VALUES (?1, ?2, ?3) \
     ON CONFLICT(target, stream) DO UPDATE SET last_run = excluded.last_run";
const ADD_DONE: &str =
    "UPDATE streams SET done_count = done_count + ?3 WHERE target = ?1 AND stream = ?2";
const SET_MARK: &str =
    "UPDATE streams SET mark = ?3, mark_records = ?4 WHERE target = ?1 AND stream = ?2";
const SET_PENDING: &str = "UPDATE streams SET pending = ?3 WHERE target = ?1 AND stream = ?2";

/// Why the ledger could not be opened, read or written. Every message names
/// the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {message}")]
    Open { path: String, message: String },
    #[error("ledger: {0}")]
    Sql(String),
}

/// What the server acknowledged for one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    pub server_id: Option<String>,
    pub version: Option<String>,
    pub hash: u128,
    /// The record whose content this is (none in a file from before
    /// fhirlift knew it): what lets a re-run tell an earlier record's
    /// content, overwritten later in the same stream, from a change.
    pub writer: Option<Writer>,
}

/// A record by its place in the source: its stream, and how many records of
/// the stream come before it (counted from the stream's start, whatever a
/// run reads or skips).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    pub stream: String,
    pub ordinal: u64,
}

/// A stream's resume point: the provenance (as the JSON of
/// [`fhirlift_core::record::Provenance`]) of the last record of the acknowledged
/// prefix, and how many records of the stream are at or before it.
#[derive(Debug, Clone)]
pub struct Mark {
    pub after: serde_json::Value,
    pub records: u64,
}

/// One stream's state, for `fhirlift status`.
#[derive(Debug, Clone, Default)]
pub struct StreamStatus {
    pub stream: String,
    /// Distinct keys ever done.
    pub done: u64,
    /// Records rejected now (a reject that later succeeded is not counted).
    pub rejected: u64,
    /// Records in flight when the last run stopped.
    pub pending: u64,
    /// The start of the last run that touched the stream, RFC 3339 UTC.
    pub last_run: Option<String>,
    /// The low-water mark, when the last run stopped before the stream's end.
    pub mark: Option<serde_json::Value>,
}

/// One rejected record, kept until it succeeds.
#[derive(Debug, Clone)]
pub struct RejectedRecord {
    pub stream: String,
    pub key: String,
    pub provenance: serde_json::Value,
    pub reason: String,
}

/// The hash of a resource's content as sent (the JSON text fhirlift renders,
/// which is deterministic).
pub fn content_hash(json: &str) -> u128 {
    fhirlift_core::group::stable_hash128(&[json])
}

/// A time as RFC 3339 in UTC, to the second: `2024-05-01T12:34:56Z`.
pub fn rfc3339_utc(time: SystemTime) -> String {
    let secs = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    };
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = fhirlift_core::civil::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// A queued change of a stream's row.
#[derive(Default)]
struct StreamChange {
    /// `Some(Some(..))` sets the mark, `Some(None)` clears it.
    mark: Option<Option<(String, u64)>>,
    pending: Option<u64>,
}

enum RecordEnd {
    Done,
    Rejected { provenance: String, reason: String },
}

/// What `commit` will write, in memory.
#[derive(Default)]
struct Queue {
    /// Acknowledgements, one per identity (a later one replaces an earlier).
    acks: Vec<(String, String, String, Acknowledged)>,
    ack_index: HashMap<String, usize>,
    /// How records ended, in order; the `usize` indexes `streams`.
    records: Vec<(usize, String, RecordEnd)>,
    /// Every stream the queue touches, with its queued row changes.
    streams: Vec<(String, StreamChange)>,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.records.is_empty() && self.streams.is_empty()
    }

    fn stream(&mut self, stream: &str) -> usize {
        match self.streams.iter().position(|(s, _)| s == stream) {
            Some(i) => i,
            None => {
                self.streams
                    .push((stream.to_owned(), StreamChange::default()));
                self.streams.len() - 1
            }
        }
    }
}

/// The in-memory key of a queued acknowledgement (length-prefixed, so no
/// two identities share one).
fn ack_key(resource_type: &str, system: &str, value: &str) -> String {
    format!(
        "{}:{resource_type}{}:{system}{value}",
        resource_type.len(),
        system.len()
    )
}

/// What to do about a failed SQLite call.
fn hint(e: &rusqlite::Error) -> &'static str {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => HELD_HINT,
        Some(ErrorCode::DiskFull) => {
            "the disk is full: free space and run again (the run resumes from its last commit)"
        }
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
            "fhirlift cannot write it: check that the file and its folder are writable, \
             or use --state to point at another file"
        }
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            "it is not a fhirlift ledger, or it is damaged: use --state to point at another \
             file, or move this one away (the next run then sends every record again)"
        }
        Some(ErrorCode::SystemIoFailure) => "the disk failed to read or write: check it",
        _ => "this is a bug in fhirlift if the file was not changed by hand: please report it",
    }
}

trait Context<T> {
    fn ctx(self, path: &str, what: &str) -> Result<T, LedgerError>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn ctx(self, path: &str, what: &str) -> Result<T, LedgerError> {
        self.map_err(|e| LedgerError::Sql(format!("{path}: {what}: {e}: {}", hint(&e))))
    }
}

fn open_error(path: &str, message: impl Into<String>) -> LedgerError {
    LedgerError::Open {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn open_sql_error(path: &str, what: &str, e: rusqlite::Error) -> LedgerError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            open_error(path, format!("it is in use: {HELD_HINT}"))
        }
        Some(ErrorCode::NotADatabase) => open_error(path, hint(&e)),
        _ => open_error(path, format!("{what}: {e}: {}", hint(&e))),
    }
}

fn hash_from_blob(blob: &[u8]) -> Option<u128> {
    Some(u128::from_be_bytes(blob.try_into().ok()?))
}

fn acknowledged_from_row(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Acknowledged> {
    let blob = row.get_ref(first + 2)?.as_blob()?;
    let hash = hash_from_blob(blob).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            first + 2,
            rusqlite::types::Type::Blob,
            format!("a hash of {} bytes, not 16", blob.len()).into(),
        )
    })?;
    let stream: Option<String> = row.get(first + 3)?;
    let ordinal: Option<i64> = row.get(first + 4)?;
    let writer = match (stream, ordinal) {
        (Some(stream), Some(ordinal)) => Some(Writer {
            stream,
            ordinal: ordinal as u64,
        }),
        _ => None,
    };
    Ok(Acknowledged {
        server_id: row.get(first)?,
        version: row.get(first + 1)?,
        hash,
        writer,
    })
}

fn parse_json(path: &str, what: &str, text: &str) -> Result<serde_json::Value, LedgerError> {
    serde_json::from_str(text).map_err(|e| {
        LedgerError::Sql(format!(
            "{path}: {what} is not JSON ({e}): the file was changed by hand or is damaged; \
             use --state to point at another file"
        ))
    })
}

/// The local state store of one target. See the module documentation.
pub struct Ledger {
    conn: Connection,
    path: String,
    target: String,
    target_id: i64,
    /// The start of this run, once [`Ledger::run_started`] was called.
    run_start: Option<String>,
    queue: Queue,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Opens (creating) the file for one target (the server's base URL, or
    /// `dry-run` / `sandbox:<dir>`), and holds it: a second open of the same
    /// file, by this process or another, fails fast with
    /// [`LedgerError::Open`] until this `Ledger` is dropped. A new file is
    /// created readable by its owner only (it holds identifiers), and its
    /// folder is created if missing.
    pub fn open(path: &Path, target: &str) -> Result<Ledger, LedgerError> {
        let shown = path.display().to_string();
        create_owner_only(path).map_err(|e| open_error(&shown, e))?;
        // No SQLITE_OPEN_URI: a path is a path, even one starting with `file:`.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags)
            .map_err(|e| open_sql_error(&shown, "open", e))?;
        let setup = |conn: &Connection| -> rusqlite::Result<String> {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
            let mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            // 32 MiB of page cache: the resources table of a large migration
            // stays mostly in memory during the delta check.
            conn.pragma_update(None, "cache_size", -32_768)?;
            // Checkpoint every 8192 pages (32 MiB of WAL) rather than 1000:
            // acknowledgements land at random places of the tables, so a
            // commit dirties about one page per row, and fewer checkpoints
            // write each page to the database fewer times (1.4x the commit
            // rate for 500-row commits of random keys). The WAL is cut back
            // to 32 MiB after a checkpoint.
            conn.pragma_update(None, "wal_autocheckpoint", 8_192)?;
            conn.pragma_update(None, "journal_size_limit", 32 * 1_048_576)?;
            conn.set_prepared_statement_cache_capacity(32);
            Ok(mode)
        };
        let mode = setup(&conn).map_err(|e| open_sql_error(&shown, "set it up", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(ledger = %shown, mode = %mode, "the ledger could not use WAL mode");
        }

        // The first write takes the exclusive lock, held from here on.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| open_sql_error(&shown, "lock", e))?;
        let tables: i64 = tx
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| open_sql_error(&shown, "read", e))?;
        let has_meta: bool = tx
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )
            .map_err(|e| open_sql_error(&shown, "read", e))?;
        if !has_meta {
            if tables > 0 {
                return Err(open_error(
                    &shown,
                    "this SQLite file is not a fhirlift ledger: use --state to point at another file",
                ));
            }
            tx.execute_batch(SCHEMA)
                .and_then(|()| {
                    tx.execute("INSERT INTO meta(version) VALUES (?1)", [SCHEMA_VERSION])
                        .map(drop)
                })
                .map_err(|e| open_sql_error(&shown, "create the tables", e))?;
        } else {
            let version: Option<i64> = tx
                .query_row("SELECT max(version) FROM meta", [], |r| r.get(0))
                .map_err(|e| open_sql_error(&shown, "read the schema version", e))?;
            match version {
                Some(SCHEMA_VERSION) => {}
                Some(1) => tx
                    .execute_batch(UPGRADE_1_TO_2)
                    .map_err(|e| open_sql_error(&shown, "upgrade it to schema version 2", e))?,
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(open_error(
                        &shown,
                        format!(
                            "written by a newer fhirlift (schema version {v}; this one knows \
                             {SCHEMA_VERSION}): upgrade fhirlift, or use --state to point at \
                             another file"
                        ),
                    ));
                }
                _ => {
                    return Err(open_error(
                        &shown,
                        "its schema version is missing or unknown: the file is damaged; use \
                         --state to point at another file",
                    ));
                }
            }
        }
        tx.execute(
            "INSERT INTO targets(target) VALUES (?1) ON CONFLICT(target) DO NOTHING",
            [target],
        )
        .map_err(|e| open_sql_error(&shown, "record the target", e))?;
        let target_id: i64 = tx
            .query_row("SELECT id FROM targets WHERE target = ?1", [target], |r| {
                r.get(0)
            })
            .map_err(|e| open_sql_error(&shown, "read the target", e))?;
        tx.commit()
            .map_err(|e| open_sql_error(&shown, "commit", e))?;

        Ok(Ledger {
            conn,
            path: shown,
            target: target.to_owned(),
            target_id,
            run_start: None,
            queue: Queue::default(),
        })
    }

    /// The target this ledger was opened for.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The file, as shown in messages.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// For the delta check: what the server acknowledged for this identity
    /// under this target, queued or committed.
    pub fn acknowledged(
        &self,
        resource_type: &str,
        system: &str,
        value: &str,
    ) -> Result<Option<Acknowledged>, LedgerError> {
        if !self.queue.ack_index.is_empty()
            && let Some(&i) = self
                .queue
                .ack_index
                .get(&ack_key(resource_type, system, value))
        {
            return Ok(Some(self.queue.acks[i].3.clone()));
        }
        let what = "read an acknowledgement";
        let mut stmt = self
            .conn
            .prepare_cached(SELECT_RESOURCE)
            .ctx(&self.path, what)?;
        stmt.query_row(params![self.target_id, resource_type, system, value], |r| {
            acknowledged_from_row(r, 0)
        })
        .optional()
        .ctx(&self.path, what)
    }

    /// Queues (in memory) an acknowledged write: upsert on (target, type,
    /// system, value); the last one queued for an identity wins.
    pub fn acknowledge(
        &mut self,
        resource_type: &str,
        system: &str,
        value: &str,
        ack: Acknowledged,
    ) {
        let q = &mut self.queue;
        match q.ack_index.entry(ack_key(resource_type, system, value)) {
            std::collections::hash_map::Entry::Occupied(e) => q.acks[*e.get()].3 = ack,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(q.acks.len());
                q.acks.push((
                    resource_type.to_owned(),
                    system.to_owned(),
                    value.to_owned(),
                    ack,
                ));
            }
        }
    }

    /// Queues: the record (stream, key) is done (written, unchanged or
    /// skipped). It clears an earlier reject of the same (stream, key).
    pub fn record_done(&mut self, stream: &str, key: &str) {
        let s = self.queue.stream(stream);
        self.queue
            .records
            .push((s, key.to_owned(), RecordEnd::Done));
    }

    /// Queues: the record (stream, key) was rejected, with its provenance and
    /// the reason; it is kept until the record is done.
    pub fn record_rejected(
        &mut self,
        stream: &str,
        key: &str,
        provenance: &serde_json::Value,
        reason: &str,
    ) {
        let s = self.queue.stream(stream);
        self.queue.records.push((
            s,
            key.to_owned(),
            RecordEnd::Rejected {
                provenance: provenance.to_string(),
                reason: reason.to_owned(),
            },
        ));
    }

    /// Queues: the stream's low-water mark moves to after `provenance`;
    /// `records` = how many records of the stream are at or before it in this
    /// pass. Queue it after the acknowledgements of every record it covers:
    /// they commit together.
    pub fn set_mark(&mut self, stream: &str, provenance: &serde_json::Value, records: u64) {
        let s = self.queue.stream(stream);
        self.queue.streams[s].1.mark = Some(Some((provenance.to_string(), records)));
    }

    /// Queues: the stream was read to its end in this pass: its mark is
    /// cleared (the next run starts from the beginning, with the delta check
    /// skipping what did not change).
    pub fn stream_finished(&mut self, stream: &str) {
        let s = self.queue.stream(stream);
        self.queue.streams[s].1.mark = Some(None);
    }

    /// Queues: the records in flight at stop (for status `pending`).
    pub fn set_pending(&mut self, stream: &str, pending: u64) {
        let s = self.queue.stream(stream);
        self.queue.streams[s].1.pending = Some(pending);
    }

    /// How many changes are queued (acknowledgements, record ends and
    /// streams touched), for the caller's commit policy.
    pub fn queued(&self) -> usize {
        self.queue.acks.len() + self.queue.records.len() + self.queue.streams.len()
    }

    /// Writes everything queued in one transaction: all of it lands, or (on
    /// an error, or a crash) none of it. On an error the queue is kept, so a
    /// later commit can try again.
    pub fn commit(&mut self) -> Result<(), LedgerError> {
        if self.queue.is_empty() {
            return Ok(());
        }
        let Ledger {
            conn,
            path,
            target_id,
            run_start,
            queue,
            ..
        } = self;
        let target = *target_id;
        let what = "commit";
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(path, what)?;
        {
            // In key order: neighbours share B-tree pages, so fewer pages are
            // visited and written.
            let mut acks: Vec<_> = queue.acks.iter().collect();
            acks.sort_unstable_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
            let mut upsert = tx.prepare_cached(UPSERT_RESOURCE).ctx(path, what)?;
            for (resource_type, system, value, ack) in acks {
                upsert
                    .execute(params![
                        target,
                        resource_type,
                        system,
                        value,
                        ack.server_id,
                        ack.version,
                        ack.hash.to_be_bytes(),
                        ack.writer.as_ref().map(|w| w.stream.as_str()),
                        ack.writer.as_ref().map(|w| w.ordinal as i64),
                    ])
                    .ctx(path, "write an acknowledgement")?;
            }

            let last_run = run_start
                .clone()
                .unwrap_or_else(|| rfc3339_utc(SystemTime::now()));
            let mut touch = tx.prepare_cached(TOUCH_STREAM).ctx(path, what)?;
            for (stream, _) in &queue.streams {
                touch
                    .execute(params![target, stream, last_run])
                    .ctx(path, "write a stream")?;
            }

            let mut new_done = vec![0u64; queue.streams.len()];
            let mut select = tx.prepare_cached(SELECT_RECORD).ctx(path, what)?;
            let what = "write a record's end";
            // In key order too; the sort is stable, so the ends of one record
            // keep their order.
            let mut records: Vec<_> = queue.records.iter().collect();
            records
                .sort_by(|a, b| (&queue.streams[a.0].0, &a.1).cmp(&(&queue.streams[b.0].0, &b.1)));
            for (s, key, end) in records {
                let stream = &queue.streams[*s].0;
                let before: Option<(String, bool)> = select
                    .query_row(params![target, stream, key], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .ctx(path, what)?;
                match (end, before) {
                    (RecordEnd::Done, None) => {
                        tx.prepare_cached(INSERT_DONE)
                            .and_then(|mut st| st.execute(params![target, stream, key]))
                            .ctx(path, what)?;
                        new_done[*s] += 1;
                    }
                    (RecordEnd::Done, Some((state, was_done))) => {
                        if state != "done" {
                            tx.prepare_cached(UPDATE_DONE)
                                .and_then(|mut st| st.execute(params![target, stream, key]))
                                .ctx(path, what)?;
                        }
                        if !was_done {
                            new_done[*s] += 1;
                        }
                    }
                    (RecordEnd::Rejected { provenance, reason }, before) => {
                        let sql = if before.is_some() {
                            UPDATE_REJECTED
                        } else {
                            INSERT_REJECTED
                        };
                        tx.prepare_cached(sql)
                            .and_then(|mut st| {
                                st.execute(params![target, stream, key, provenance, reason])
                            })
                            .ctx(path, what)?;
                    }
                }
            }

            let what = "write a stream";
            for ((stream, change), added) in queue.streams.iter().zip(new_done) {
                if added > 0 {
                    tx.prepare_cached(ADD_DONE)
                        .and_then(|mut st| st.execute(params![target, stream, added]))
                        .ctx(path, what)?;
                }
                if let Some(mark) = &change.mark {
                    let (after, records) = match mark {
                        Some((after, records)) => (Some(after.as_str()), Some(*records)),
                        None => (None, None),
                    };
                    tx.prepare_cached(SET_MARK)
                        .and_then(|mut st| st.execute(params![target, stream, after, records]))
                        .ctx(path, what)?;
                }
                if let Some(pending) = change.pending {
                    tx.prepare_cached(SET_PENDING)
                        .and_then(|mut st| st.execute(params![target, stream, pending]))
                        .ctx(path, what)?;
                }
            }
        }
        tx.commit().ctx(path, what)?;
        *queue = Queue::default();
        Ok(())
    }

    /// The stream's committed low-water mark, if a run stopped before the
    /// stream's end.
    pub fn mark(&self, stream: &str) -> Result<Option<Mark>, LedgerError> {
        let row: Option<(Option<String>, Option<u64>)> = self
            .conn
            .prepare_cached(
                "SELECT mark, mark_records FROM streams WHERE target = ?1 AND stream = ?2",
            )
            .and_then(|mut st| {
                st.query_row(params![self.target_id, stream], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
            })
            .ctx(&self.path, "read a mark")?;
        match row {
            Some((Some(after), records)) => Ok(Some(Mark {
                after: parse_json(&self.path, "a mark", &after)?,
                records: records.unwrap_or(0),
            })),
            _ => Ok(None),
        }
    }

    /// Forgets the marks, committed and queued (for `--full`: start every
    /// stream from the beginning).
    pub fn clear_marks(&mut self) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "UPDATE streams SET mark = NULL, mark_records = NULL WHERE target = ?1",
                [self.target_id],
            )
            .ctx(&self.path, "clear the marks")?;
        for (_, change) in &mut self.queue.streams {
            change.mark = None;
        }
        Ok(())
    }

    /// Whether the stream has a committed reject at all (cheap: the partial
    /// index of rejects).
    pub fn has_rejects(&self, stream: &str) -> Result<bool, LedgerError> {
        self.conn
            .prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM records \
                 WHERE target = ?1 AND stream = ?2 AND state = 'rejected')",
            )
            .and_then(|mut st| st.query_row(params![self.target_id, stream], |r| r.get(0)))
            .ctx(&self.path, "read the rejects")
    }

    /// Whether the record (stream, key) is rejected now, committed.
    pub fn is_rejected(&self, stream: &str, key: &str) -> Result<bool, LedgerError> {
        self.conn
            .prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM records \
                 WHERE target = ?1 AND stream = ?2 AND key = ?3 AND state = 'rejected')",
            )
            .and_then(|mut st| st.query_row(params![self.target_id, stream, key], |r| r.get(0)))
            .ctx(&self.path, "read a reject")
    }

    /// The stream's committed rejects, by key.
    pub fn rejected(&self, stream: &str) -> Result<Vec<RejectedRecord>, LedgerError> {
        let what = "read the rejects";
        let rows: Vec<(String, Option<String>, Option<String>)> = self
            .conn
            .prepare_cached(
                "SELECT key, provenance, reason FROM records \
                 WHERE target = ?1 AND stream = ?2 AND state = 'rejected' ORDER BY key",
            )
            .and_then(|mut st| {
                st.query_map(params![self.target_id, stream], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect()
            })
            .ctx(&self.path, what)?;
        rows.into_iter()
            .map(|(key, provenance, reason)| {
                Ok(RejectedRecord {
                    stream: stream.to_owned(),
                    key,
                    provenance: match provenance {
                        Some(p) => parse_json(&self.path, "a reject's provenance", &p)?,
                        None => serde_json::Value::Null,
                    },
                    reason: reason.unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Every stream of this target, by name, as committed.
    pub fn status(&self) -> Result<Vec<StreamStatus>, LedgerError> {
        // Each stream's status, with its mark still as JSON text.
        let rows: Vec<(StreamStatus, Option<String>)> = self
            .conn
            .prepare_cached(
                "SELECT s.stream, s.done_count, s.pending, \
                 (SELECT count(*) FROM records r WHERE r.target = s.target \
                  AND r.stream = s.stream AND r.state = 'rejected'), \
                 s.last_run, s.mark \
                 FROM streams s WHERE s.target = ?1 ORDER BY s.stream",
            )
            .and_then(|mut st| {
                st.query_map([self.target_id], |r| {
                    let status = StreamStatus {
                        stream: r.get(0)?,
                        done: r.get(1)?,
                        pending: r.get(2)?,
                        rejected: r.get(3)?,
                        last_run: r.get(4)?,
                        mark: None,
                    };
                    Ok((status, r.get(5)?))
                })?
                .collect()
            })
            .ctx(&self.path, "read the status")?;
        rows.into_iter()
            .map(|(mut status, mark)| {
                if let Some(mark) = mark {
                    status.mark = Some(parse_json(&self.path, "a mark", &mark)?);
                }
                Ok(status)
            })
            .collect()
    }

    /// Records the start of a run (call it at the start): the target's
    /// `last_run` becomes now, and so does the `last_run` of every stream the
    /// run commits something for.
    pub fn run_started(&mut self) -> Result<(), LedgerError> {
        let now = rfc3339_utc(SystemTime::now());
        self.conn
            .execute(
                "UPDATE targets SET last_run = ?2 WHERE id = ?1",
                params![self.target_id, now],
            )
            .ctx(&self.path, "record the run's start")?;
        self.run_start = Some(now);
        Ok(())
    }

    /// The start of this target's last run, RFC 3339 UTC.
    pub fn last_run(&self) -> Result<Option<String>, LedgerError> {
        self.conn
            .query_row(
                "SELECT last_run FROM targets WHERE id = ?1",
                [self.target_id],
                |r| r.get(0),
            )
            .ctx(&self.path, "read the last run")
    }

    /// Every target the file holds (this one included), by name.
    pub fn targets(&self) -> Result<Vec<String>, LedgerError> {
        self.conn
            .prepare_cached("SELECT target FROM targets ORDER BY target")
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .ctx(&self.path, "read the targets")
    }

    /// Every committed acknowledged identity of a type, as (system, value,
    /// acknowledgement), by system and value (for tests comparing the ledger
    /// with the server).
    pub fn identities(
        &self,
        resource_type: &str,
    ) -> Result<Vec<(String, String, Acknowledged)>, LedgerError> {
        self.conn
            .prepare_cached(
                "SELECT system, value, server_id, version, hash, writer_stream, writer_ordinal FROM resources \
                 WHERE target = ?1 AND resource_type = ?2 ORDER BY system, value",
            )
            .and_then(|mut st| {
                st.query_map(params![self.target_id, resource_type], |r| {
                    Ok((r.get(0)?, r.get(1)?, acknowledged_from_row(r, 2)?))
                })?
                .collect()
            })
            .ctx(&self.path, "read the identities")
    }

    /// Up to `per_type` acknowledged identities of each resource type this
    /// target holds, picked at random, as (type, system, value, server id):
    /// what a run checks the server still holds before it trusts the
    /// ledger (a server reset, a project emptied, a new sandbox store).
    pub fn sample(&self, per_type: usize) -> Result<Vec<SampledIdentity>, LedgerError> {
        let what = "sample the identities";
        let types: Vec<String> = self
            .conn
            .prepare_cached("SELECT DISTINCT resource_type FROM resources WHERE target = ?1")
            .and_then(|mut st| st.query_map([self.target_id], |r| r.get(0))?.collect())
            .ctx(&self.path, what)?;
        let mut sample = Vec::new();
        for resource_type in types {
            let rows: Vec<SampledIdentity> = self
                .conn
                .prepare_cached(
                    "SELECT system, value, server_id FROM resources \
                     WHERE target = ?1 AND resource_type = ?2 ORDER BY random() LIMIT ?3",
                )
                .and_then(|mut st| {
                    st.query_map(
                        params![self.target_id, resource_type, per_type as i64],
                        |r| {
                            Ok(SampledIdentity {
                                resource_type: resource_type.clone(),
                                system: r.get(0)?,
                                value: r.get(1)?,
                                server_id: r.get(2)?,
                            })
                        },
                    )?
                    .collect()
                })
                .ctx(&self.path, what)?;
            sample.extend(rows);
        }
        Ok(sample)
    }
}

/// Creates the file (and its folder) if missing, readable by its owner only:
/// it holds identifiers and the servers' reasons for rejects. SQLite gives
/// its WAL file the same permissions.
fn create_owner_only(path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "cannot create its folder: {e}: check the path, or use --state to point at \
                 another file"
            )
        })?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!(
            "cannot create it: {e}: check that its folder is writable, or use --state to \
             point at another file"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    use serde_json::json;

    use super::*;

    /// A unique file under the temp dir, removed (with its WAL) on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str) -> TempFile {
            static N: AtomicU32 = AtomicU32::new(0);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            TempFile(std::env::temp_dir().join(format!(
                "fhirlift-ledger-{name}-{}-{nanos}-{}.db",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            )))
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut p = self.0.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }

    fn ack(id: &str, version: &str, json: &str) -> Acknowledged {
        Acknowledged {
            server_id: Some(id.to_owned()),
            version: Some(version.to_owned()),
            hash: content_hash(json),
            writer: Some(Writer {
                stream: "patients".to_owned(),
                ordinal: 41,
            }),
        }
    }

    const SYS: &str = "http://clinic.example/mrn";

    #[test]
    fn acknowledgements_round_trip() {
        let file = TempFile::new("round-trip");
        let mut ledger = Ledger::open(&file.0, "http://fhir.example/r4").unwrap();
        assert_eq!(ledger.acknowledged("Patient", SYS, "P1").unwrap(), None);

        let a1 = ack("p-1", "1", r#"{"resourceType":"Patient"}"#);
        ledger.acknowledge("Patient", SYS, "P1", a1.clone());
        // queued acknowledgements are seen by the delta check at once
        assert_eq!(
            ledger.acknowledged("Patient", SYS, "P1").unwrap(),
            Some(a1.clone())
        );
        ledger.commit().unwrap();
        assert_eq!(
            ledger.acknowledged("Patient", SYS, "P1").unwrap(),
            Some(a1.clone())
        );

        // an upsert replaces; no id nor version is kept as None; a full-width hash survives
        let a2 = Acknowledged {
            server_id: None,
            version: None,
            hash: u128::MAX - 7,
            writer: None,
        };
        ledger.acknowledge("Patient", SYS, "P1", a2.clone());
        ledger.acknowledge("Patient", SYS, "P2", a1.clone());
        ledger.acknowledge("Observation", SYS, "P1", a1.clone());
        ledger.commit().unwrap();
        assert_eq!(
            ledger.acknowledged("Patient", SYS, "P1").unwrap(),
            Some(a2.clone())
        );
        assert_eq!(ledger.acknowledged("Patient", "other", "P1").unwrap(), None);

        let ids = ledger.identities("Patient").unwrap();
        assert_eq!(
            ids,
            vec![
                (SYS.to_owned(), "P1".to_owned(), a2.clone()),
                (SYS.to_owned(), "P2".to_owned(), a1.clone()),
            ]
        );
        assert_eq!(ledger.identities("Observation").unwrap().len(), 1);
        drop(ledger);

        let ledger = Ledger::open(&file.0, "http://fhir.example/r4").unwrap();
        assert_eq!(ledger.acknowledged("Patient", SYS, "P1").unwrap(), Some(a2));
        assert_eq!(ledger.acknowledged("Patient", SYS, "P2").unwrap(), Some(a1));
    }

    #[test]
    fn content_hash_is_deterministic() {
        assert_eq!(content_hash(r#"{"a":1}"#), content_hash(r#"{"a":1}"#));
        assert_ne!(content_hash(r#"{"a":1}"#), content_hash(r#"{"a":2}"#));
    }

    #[test]
    fn uncommitted_queue_is_lost_on_drop_committed_data_survives() {
        let file = TempFile::new("drop");
        let mut ledger = Ledger::open(&file.0, "dry-run").unwrap();
        ledger.acknowledge("Patient", SYS, "P1", ack("1", "1", "a"));
        ledger.record_done("patients", "P1");
        ledger.set_mark(
            "patients",
            &json!({"kind": "file", "file": "p.csv", "line": 2}),
            1,
        );
        ledger.commit().unwrap();

        ledger.acknowledge("Patient", SYS, "P2", ack("2", "1", "b"));
        ledger.record_done("patients", "P2");
        ledger.set_mark(
            "patients",
            &json!({"kind": "file", "file": "p.csv", "line": 3}),
            2,
        );
        assert!(ledger.queued() > 0);
        drop(ledger); // no commit: as if killed

        let ledger = Ledger::open(&file.0, "dry-run").unwrap();
        assert!(ledger.acknowledged("Patient", SYS, "P1").unwrap().is_some());
        assert_eq!(ledger.acknowledged("Patient", SYS, "P2").unwrap(), None);
        let mark = ledger.mark("patients").unwrap().unwrap();
        assert_eq!(mark.after["line"], 2);
        assert_eq!(mark.records, 1);
        assert_eq!(ledger.status().unwrap()[0].done, 1);
    }

    /// The child half of `kill_9_keeps_committed_data`: commits, queues more,
    /// says so, and waits to be killed.
    #[test]
    #[ignore = "run by kill_9_keeps_committed_data in a child process"]
    fn kill_9_child() {
        let Some(path) = std::env::var_os("FHIRLIFT_LEDGER_KILL_CHILD") else {
            return;
        };
        let mut ledger = Ledger::open(Path::new(&path), "http://fhir.example/r4").unwrap();
        for i in 0..1_000 {
            ledger.acknowledge(
                "Patient",
                SYS,
                &format!("P{i}"),
                ack(&i.to_string(), "1", "c"),
            );
            ledger.record_done("patients", &format!("P{i}"));
        }
        ledger.set_mark(
            "patients",
            &json!({"kind": "table", "table": "p", "key": "999"}),
            1_000,
        );
        ledger.commit().unwrap();
        ledger.acknowledge("Patient", SYS, "Q", ack("q", "1", "c"));
        ledger.set_mark(
            "patients",
            &json!({"kind": "table", "table": "p", "key": "Q"}),
            1_001,
        );
        println!("LEDGER-CHILD-READY");
        std::thread::sleep(Duration::from_secs(60));
        std::process::exit(1);
    }

    #[test]
    #[cfg(unix)]
    fn kill_9_keeps_committed_data() {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};

        let file = TempFile::new("kill9");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "tests::kill_9_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FHIRLIFT_LEDGER_KILL_CHILD", &file.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let ready = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("LEDGER-CHILD-READY"));
        assert!(ready, "the child did not get ready");
        // while the child lives, the file is held
        let held = Ledger::open(&file.0, "http://fhir.example/r4").unwrap_err();
        assert!(
            held.to_string().contains("another fhirlift run holds it"),
            "{held}"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let ledger = Ledger::open(&file.0, "http://fhir.example/r4").unwrap();
        assert_eq!(ledger.identities("Patient").unwrap().len(), 1_000);
        assert_eq!(ledger.acknowledged("Patient", SYS, "Q").unwrap(), None);
        let mark = ledger.mark("patients").unwrap().unwrap();
        assert_eq!(mark.after["key"], "999");
        assert_eq!(mark.records, 1_000);
    }

    #[test]
    fn marks_are_set_cleared_and_finished() {
        let file = TempFile::new("marks");
        let mut ledger = Ledger::open(&file.0, "dry-run").unwrap();
        assert!(ledger.mark("patients").unwrap().is_none());

        let p = json!({"kind": "message", "file": "a.hl7", "offset": 120, "control_id": "M1"});
        ledger.set_mark("patients", &p, 10);
        // a queued mark is not on disk yet
        assert!(ledger.mark("patients").unwrap().is_none());
        ledger.commit().unwrap();
        let mark = ledger.mark("patients").unwrap().unwrap();
        assert_eq!(mark.after, p);
        assert_eq!(mark.records, 10);
        assert!(ledger.mark("visits").unwrap().is_none());

        // the last queued change of a stream wins
        ledger.set_mark(
            "patients",
            &json!({"kind": "file", "file": "x", "line": 9}),
            11,
        );
        ledger.stream_finished("patients");
        ledger.commit().unwrap();
        assert!(ledger.mark("patients").unwrap().is_none());

        ledger.set_mark("patients", &p, 3);
        ledger.set_mark("visits", &p, 4);
        ledger.commit().unwrap();
        assert!(ledger.mark("visits").unwrap().is_some());
        ledger.set_mark("visits", &p, 5); // queued, then forgotten too
        ledger.clear_marks().unwrap();
        ledger.commit().unwrap();
        assert!(ledger.mark("patients").unwrap().is_none());
        assert!(ledger.mark("visits").unwrap().is_none());
        assert!(ledger.status().unwrap().iter().all(|s| s.mark.is_none()));
    }

    #[test]
    fn done_clears_reject_and_status_counts() {
        let file = TempFile::new("status");
        let mut ledger = Ledger::open(&file.0, "dry-run").unwrap();
        ledger.run_started().unwrap();
        let prov = |line: u64| json!({"kind": "file", "file": "p.csv", "line": line});
        for key in ["a", "b", "c"] {
            ledger.record_done("patients", key);
        }
        ledger.record_rejected("patients", "d", &prov(5), "HTTP 422: bad gender");
        ledger.record_rejected("patients", "e", &prov(6), "HTTP 400");
        ledger.record_rejected("visits", "v1", &prov(2), "no patient");
        ledger.set_pending("visits", 7);
        ledger.commit().unwrap();

        let rejected = ledger.rejected("patients").unwrap();
        assert_eq!(
            rejected.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["d", "e"]
        );
        assert_eq!(rejected[0].provenance, prov(5));
        assert_eq!(rejected[0].reason, "HTTP 422: bad gender");
        assert_eq!(rejected[0].stream, "patients");

        // d succeeds on a retry; a done again; a rejected after being done; e rejected again
        ledger.record_done("patients", "d");
        ledger.record_done("patients", "a");
        ledger.record_rejected("patients", "b", &prov(3), "HTTP 409");
        ledger.record_rejected("patients", "e", &prov(6), "HTTP 400 again");
        ledger.commit().unwrap();
        let keys: Vec<_> = ledger.rejected("patients").unwrap();
        assert_eq!(
            keys.iter()
                .map(|r| (r.key.as_str(), r.reason.as_str()))
                .collect::<Vec<_>>(),
            [("b", "HTTP 409"), ("e", "HTTP 400 again")]
        );

        let status = ledger.status().unwrap();
        assert_eq!(status.len(), 2);
        let p = &status[0];
        assert_eq!(p.stream, "patients");
        assert_eq!((p.done, p.rejected, p.pending), (4, 2, 0));
        let v = &status[1];
        assert_eq!(
            (v.stream.as_str(), v.done, v.rejected, v.pending),
            ("visits", 0, 1, 7)
        );
        let last_run = p.last_run.clone().unwrap();
        assert_eq!(last_run.len(), 20, "{last_run}");
        assert!(last_run.ends_with('Z') && last_run.as_bytes()[10] == b'T');
        assert_eq!(ledger.last_run().unwrap(), Some(last_run));

        // b done again: counted once ever
        ledger.record_done("patients", "b");
        ledger.set_pending("visits", 0);
        ledger.commit().unwrap();
        let status = ledger.status().unwrap();
        assert_eq!((status[0].done, status[0].rejected), (4, 1));
        assert_eq!(status[1].pending, 0);
    }

    #[test]
    fn second_open_fails_fast() {
        let file = TempFile::new("lock");
        let _held = Ledger::open(&file.0, "http://fhir.example/r4").unwrap();
        let start = Instant::now();
        let err = Ledger::open(&file.0, "http://fhir.example/r4").unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        let message = err.to_string();
        assert!(matches!(err, LedgerError::Open { .. }), "{message}");
        assert!(message.contains(&file.0.display().to_string()), "{message}");
        assert!(
            message.contains("another fhirlift run holds it"),
            "{message}"
        );
        // even for another target of the same file
        assert!(Ledger::open(&file.0, "dry-run").is_err());
    }

    #[test]
    fn targets_do_not_see_each_other() {
        let file = TempFile::new("targets");
        let a = "http://a.example/fhir";
        let b = "sandbox:/tmp/x";
        let mut ledger = Ledger::open(&file.0, a).unwrap();
        ledger.acknowledge("Patient", SYS, "P1", ack("a1", "1", "x"));
        ledger.record_rejected("patients", "k", &json!({"kind": "file"}), "no");
        ledger.set_mark("patients", &json!({"kind": "file"}), 1);
        ledger.commit().unwrap();
        drop(ledger);

        let mut ledger = Ledger::open(&file.0, b).unwrap();
        assert_eq!(ledger.acknowledged("Patient", SYS, "P1").unwrap(), None);
        assert!(ledger.identities("Patient").unwrap().is_empty());
        assert!(ledger.rejected("patients").unwrap().is_empty());
        assert!(ledger.mark("patients").unwrap().is_none());
        assert!(ledger.status().unwrap().is_empty());
        ledger.acknowledge("Patient", SYS, "P1", ack("b1", "3", "y"));
        ledger.record_done("patients", "k");
        ledger.commit().unwrap();
        ledger.clear_marks().unwrap();
        assert_eq!(ledger.targets().unwrap(), [a, b]);
        drop(ledger);

        let ledger = Ledger::open(&file.0, a).unwrap();
        let ack_a = ledger.acknowledged("Patient", SYS, "P1").unwrap().unwrap();
        assert_eq!(ack_a.server_id.as_deref(), Some("a1"));
        assert_eq!(ledger.rejected("patients").unwrap().len(), 1);
        assert!(ledger.mark("patients").unwrap().is_some());
        assert_eq!(ledger.target(), a);
    }

    #[test]
    fn newer_schema_is_refused() {
        let file = TempFile::new("schema");
        drop(Ledger::open(&file.0, "dry-run").unwrap());
        let conn = Connection::open(&file.0).unwrap();
        conn.execute("UPDATE meta SET version = 3", []).unwrap();
        drop(conn);
        let err = Ledger::open(&file.0, "dry-run").unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, LedgerError::Open { .. }), "{message}");
        assert!(message.contains("newer fhirlift"), "{message}");
        assert!(message.contains("schema version 3"), "{message}");
    }

    #[test]
    fn a_version_1_file_is_upgraded_and_keeps_its_acknowledgements() {
        let file = TempFile::new("schema-1");
        let conn = Connection::open(&file.0).unwrap();
        let v1 = SCHEMA.replace("    writer_stream TEXT,\n    writer_ordinal INTEGER,\n", "");
        assert_ne!(v1, SCHEMA);
        conn.execute_batch(&v1).unwrap();
        conn.execute_batch(
            "INSERT INTO meta(version) VALUES (1);
             INSERT INTO targets(id, target) VALUES (1, 'dry-run');",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO resources VALUES (1, 'Patient', ?1, 'P1', 'p-1', '1', ?2)",
            params![SYS, 7u128.to_be_bytes()],
        )
        .unwrap();
        drop(conn);
        let mut ledger = Ledger::open(&file.0, "dry-run").unwrap();
        let old = ledger.acknowledged("Patient", SYS, "P1").unwrap().unwrap();
        assert_eq!((old.hash, old.writer), (7, None));
        let new = ack("p-2", "1", "{}");
        ledger.acknowledge("Patient", SYS, "P2", new.clone());
        ledger.commit().unwrap();
        drop(ledger);
        let ledger = Ledger::open(&file.0, "dry-run").unwrap();
        assert_eq!(
            ledger.acknowledged("Patient", SYS, "P2").unwrap(),
            Some(new)
        );
    }

    #[test]
    fn foreign_files_are_refused() {
        let file = TempFile::new("foreign");
        let conn = Connection::open(&file.0).unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        drop(conn);
        let err = Ledger::open(&file.0, "dry-run").unwrap_err().to_string();
        assert!(err.contains("not a fhirlift ledger"), "{err}");

        let text = TempFile::new("text");
        std::fs::write(&text.0, "name,id\nAda,1\n".repeat(100)).unwrap();
        let err = Ledger::open(&text.0, "dry-run").unwrap_err().to_string();
        assert!(err.contains("not a fhirlift ledger"), "{err}");
    }

    #[test]
    #[cfg(unix)]
    fn new_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let file = TempFile::new("mode");
        drop(Ledger::open(&file.0, "dry-run").unwrap());
        let mode = std::fs::metadata(&file.0).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }

    #[test]
    fn rfc3339_formats_utc() {
        let at = |s: u64| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    /// `cargo test -p fhirlift-core --lib ledger::tests::bench -- --ignored --nocapture`
    #[test]
    #[ignore = "micro-benchmark"]
    fn bench_ledger() {
        const N: u64 = 200_000;
        const BATCH: u64 = 500;
        let file = TempFile::new("bench");
        let mut ledger = Ledger::open(&file.0, "http://fhir.example/r4").unwrap();
        let value = |i: u64| format!("MRN-{:08}", i.wrapping_mul(2_654_435_761) % 100_000_000);
        let rate = |n: u64, t: Instant| n as f64 / t.elapsed().as_secs_f64();

        let t = Instant::now();
        for i in 0..N {
            let ack = Acknowledged {
                server_id: Some(format!("0190b7e4-{i:012}")),
                version: Some("1".to_owned()),
                hash: content_hash(&value(i)),
                writer: Some(Writer {
                    stream: "patients".to_owned(),
                    ordinal: i,
                }),
            };
            ledger.acknowledge("Patient", SYS, &value(i), ack);
            if (i + 1) % BATCH == 0 {
                ledger.commit().unwrap();
            }
        }
        ledger.commit().unwrap();
        println!(
            "acknowledge+commit: {:.0} acks/s ({N} in batches of {BATCH})",
            rate(N, t)
        );

        let t = Instant::now();
        for i in 0..N {
            ledger.record_done("patients", &value(i));
            if (i + 1) % BATCH == 0 {
                ledger.set_mark(
                    "patients",
                    &json!({"kind": "file", "file": "p.csv", "line": i}),
                    i,
                );
                ledger.commit().unwrap();
            }
        }
        ledger.commit().unwrap();
        println!("record_done+commit (new keys): {:.0} records/s", rate(N, t));

        let t = Instant::now();
        for i in 0..N {
            ledger.record_done("patients", &value(i));
            if (i + 1) % BATCH == 0 {
                ledger.commit().unwrap();
            }
        }
        ledger.commit().unwrap();
        println!(
            "record_done+commit (re-run, already done): {:.0} records/s",
            rate(N, t)
        );

        let t = Instant::now();
        let mut found = 0;
        for i in 0..N {
            // another order than the inserts'
            let j = (i * 7_919) % N;
            found += ledger
                .acknowledged("Patient", SYS, &value(j))
                .unwrap()
                .is_some() as u64;
        }
        println!("acknowledged lookups (hits): {:.0} lookups/s", rate(N, t));
        assert_eq!(found, N);

        let t = Instant::now();
        for i in 0..N {
            assert!(
                ledger
                    .acknowledged("Patient", SYS, &format!("none-{i}"))
                    .unwrap()
                    .is_none()
            );
        }
        println!("acknowledged lookups (misses): {:.0} lookups/s", rate(N, t));
        assert_eq!(ledger.status().unwrap()[0].done, N);
        let size = std::fs::metadata(&file.0).unwrap().len();
        println!("file: {:.1} MiB", size as f64 / 1_048_576.0);
    }
}
