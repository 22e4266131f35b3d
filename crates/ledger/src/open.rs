//! Opening a ledger file: created owner-only, locked against a second
//! run, its schema created or upgraded, its target registered.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::queue::Queue;
use crate::{Ledger, LedgerError};

use crate::schema::{BUSY_TIMEOUT, SCHEMA, SCHEMA_VERSION, UPGRADE_1_TO_2};
use crate::sqlite::{create_owner_only, open_error, open_sql_error};

impl Ledger {
    /// Opens (creating) the file for one target (the server's base URL, or
    /// `dry-run` / `sandbox:<dir>`), and holds it: a second open of the same
    /// file, by this process or another, fails fast with
    /// [`LedgerError::Open`] until this `Ledger` is dropped. A new file is
    /// created readable by its owner only (it holds identifiers), and its
    /// folder is created if missing.
    pub fn open(path: &Path, target: &str) -> Result<Ledger, LedgerError> {
        let shown = path.display().to_string();
        create_owner_only(path, &shown)?;
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
}
