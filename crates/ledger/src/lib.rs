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
mod open;
mod queue;
mod read;
mod schema;
mod sqlite;
mod write;

#[cfg(test)]
mod tests;

use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use queue::Queue;
pub use schema::SCHEMA_VERSION;

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
    match jiff::Timestamp::from_second(secs) {
        Ok(at) => at.to_string(),
        Err(_) => format!("{secs} s from 1970-01-01 (beyond years -9999..9999)"),
    }
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
    /// The target this ledger was opened for.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The file, as shown in messages.
    pub fn path(&self) -> &str {
        &self.path
    }
}
