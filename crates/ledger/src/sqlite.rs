//! SQLite calls read into [`LedgerError`]s that name the file and say
//! what to do; rows read into the ledger's types; the file created
//! owner-only.

use std::path::Path;

use rusqlite::ErrorCode;

use crate::schema::HELD_HINT;
use crate::{Acknowledged, LedgerError, Writer};

/// What to do about a failed SQLite call.
pub(crate) fn hint(e: &rusqlite::Error) -> &'static str {
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

pub(crate) trait Context<T> {
    fn ctx(self, path: &str, what: &str) -> Result<T, LedgerError>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn ctx(self, path: &str, what: &str) -> Result<T, LedgerError> {
        self.map_err(|e| LedgerError::Sql(format!("{path}: {what}: {e}: {}", hint(&e))))
    }
}

pub(crate) fn open_error(path: &str, message: impl Into<String>) -> LedgerError {
    LedgerError::Open {
        path: path.to_owned(),
        message: message.into(),
    }
}

pub(crate) fn open_sql_error(path: &str, what: &str, e: rusqlite::Error) -> LedgerError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            open_error(path, format!("it is in use: {HELD_HINT}"))
        }
        Some(ErrorCode::NotADatabase) => open_error(path, hint(&e)),
        _ => open_error(path, format!("{what}: {e}: {}", hint(&e))),
    }
}

pub(crate) fn hash_from_blob(blob: &[u8]) -> Option<u128> {
    Some(u128::from_be_bytes(blob.try_into().ok()?))
}

pub(crate) fn acknowledged_from_row(
    row: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<Acknowledged> {
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

pub(crate) fn parse_json(
    path: &str,
    what: &str,
    text: &str,
) -> Result<serde_json::Value, LedgerError> {
    serde_json::from_str(text).map_err(|e| {
        LedgerError::Sql(format!(
            "{path}: {what} is not JSON ({e}): the file was changed by hand or is damaged; \
             use --state to point at another file"
        ))
    })
}

/// Creates the file (and its folder) if missing, readable by its owner only:
/// it holds identifiers and the servers' reasons for rejects. SQLite gives
/// its WAL file the same permissions.
pub(crate) fn create_owner_only(path: &Path, shown: &str) -> Result<(), LedgerError> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            open_error(
                shown,
                format!(
                    "cannot create its folder: {e}: check the path, or use --state to point at \
                     another file"
                ),
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
        Err(e) => Err(open_error(
            shown,
            format!(
                "cannot create it: {e}: check that its folder is writable, or use --state to \
                 point at another file"
            ),
        )),
    }
}
