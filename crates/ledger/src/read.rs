//! Reading the ledger: marks, rejects, status, targets and samples of
//! what a target holds.

use std::time::SystemTime;

use fhirlift_core::transport::SampledIdentity;
use rusqlite::{OptionalExtension, params};

use crate::sqlite::{Context, acknowledged_from_row, parse_json};
use crate::{Acknowledged, Ledger, LedgerError, Mark, RejectedRecord, StreamStatus, rfc3339_utc};

impl Ledger {
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
