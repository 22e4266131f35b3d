//! Writing to the ledger: acknowledgements, record ends, marks and
//! pending counts queued in memory, then committed in one transaction.

use std::time::SystemTime;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::queue::{Queue, RecordEnd, ack_key};
use crate::schema::{
    ADD_DONE, INSERT_DONE, INSERT_REJECTED, SELECT_RECORD, SELECT_RESOURCE, SET_MARK, SET_PENDING,
    TOUCH_STREAM, UPDATE_DONE, UPDATE_REJECTED, UPSERT_RESOURCE,
};
use crate::sqlite::{Context, acknowledged_from_row};
use crate::{Acknowledged, Ledger, LedgerError, rfc3339_utc};

impl Ledger {
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
}
