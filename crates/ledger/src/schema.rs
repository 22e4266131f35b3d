//! The ledger's SQLite schema and the statements the ledger prepares.

use std::time::Duration;

/// The schema version this fhirlift writes and reads.
pub const SCHEMA_VERSION: i64 = 2;

/// How long an open waits for another run's lock before it gives up.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_millis(200);

/// What to do when another run holds the file.
pub(crate) const HELD_HINT: &str =
    "another fhirlift run holds it: wait for it, or use --state to point at another file";

pub(crate) const SCHEMA: &str = "
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

pub(crate) const SELECT_RESOURCE: &str = "SELECT server_id, version, hash, writer_stream, writer_ordinal FROM resources \
     WHERE target = ?1 AND resource_type = ?2 AND system = ?3 AND value = ?4";
pub(crate) const UPSERT_RESOURCE: &str = "INSERT INTO resources(target, resource_type, system, value, server_id, version, hash, writer_stream, writer_ordinal) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
     ON CONFLICT(target, resource_type, system, value) DO UPDATE SET \
     server_id = excluded.server_id, version = excluded.version, hash = excluded.hash, \
     writer_stream = excluded.writer_stream, writer_ordinal = excluded.writer_ordinal";
/// Schema version 1 to 2: who last wrote each identity.
pub(crate) const UPGRADE_1_TO_2: &str = "ALTER TABLE resources ADD COLUMN writer_stream TEXT; \
     ALTER TABLE resources ADD COLUMN writer_ordinal INTEGER; \
     UPDATE meta SET version = 2;";
pub(crate) const SELECT_RECORD: &str =
    "SELECT state, was_done FROM records WHERE target = ?1 AND stream = ?2 AND key = ?3";
pub(crate) const INSERT_DONE: &str =
    "INSERT INTO records(target, stream, key, state, was_done) VALUES (?1, ?2, ?3, 'done', 1)";
pub(crate) const UPDATE_DONE: &str = "UPDATE records SET state = 'done', was_done = 1, provenance = NULL, reason = NULL \
     WHERE target = ?1 AND stream = ?2 AND key = ?3";
pub(crate) const INSERT_REJECTED: &str = "INSERT INTO records(target, stream, key, state, was_done, provenance, reason) \
     VALUES (?1, ?2, ?3, 'rejected', 0, ?4, ?5)";
pub(crate) const UPDATE_REJECTED: &str = "UPDATE records SET state = 'rejected', provenance = ?4, reason = ?5 \
     WHERE target = ?1 AND stream = ?2 AND key = ?3";
pub(crate) const TOUCH_STREAM: &str = "INSERT INTO streams(target, stream, last_run) VALUES (?1, ?2, ?3) \
     ON CONFLICT(target, stream) DO UPDATE SET last_run = excluded.last_run";
pub(crate) const ADD_DONE: &str =
    "UPDATE streams SET done_count = done_count + ?3 WHERE target = ?1 AND stream = ?2";
pub(crate) const SET_MARK: &str =
    "UPDATE streams SET mark = ?3, mark_records = ?4 WHERE target = ?1 AND stream = ?2";
pub(crate) const SET_PENDING: &str =
    "UPDATE streams SET pending = ?3 WHERE target = ?1 AND stream = ?2";
