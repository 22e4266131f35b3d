//! Settling answers: a 2xx read entry by entry (written, resent alone,
//! rejected), a transaction's verdict, the resolve strategy's rewritten
//! requests, and the rejects and stops that end a request.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use serde_json::Value;

use fhirlift_core::transport::{Outcome, Settled};

use super::{Dispatcher, Job};
use crate::outcomes::{
    Resend, Verdict, entry_outcome, entry_resent, entry_status, explain_412, is_transient,
    outcome_text, strongest, transaction_verdict,
};
use crate::resolve::{self, Resolution};
use fhirlift_core::planner::RequestKind;

impl Dispatcher {
    /// A 2xx answer: settle entry by entry, resend the transient failures.
    pub(super) fn answered(
        &mut self,
        job: Job,
        body: &Value,
        sent_at_ms: Option<i64>,
        waiting: &mut VecDeque<Job>,
    ) {
        let request = &job.request;
        let responses: &[Value] = body["entry"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut resend = Resend::default();
        if request.kind == RequestKind::Transaction {
            self.settle_transaction(&job, 0, responses, body, sent_at_ms, &mut resend);
            self.resend_or_grow(&job, &resend, waiting);
            return;
        }
        if responses.len() != request.entries.len() {
            let n = request.entries.len();
            let reason = format!(
                "the server answered {} entries for a bundle of {n}; nothing can be assumed written",
                responses.len()
            );
            self.reject_entries(&job, &(0..n).collect::<Vec<_>>(), None, &reason, Some(body));
            return;
        }
        for (i, response) in responses.iter().enumerate() {
            let status = entry_status(response);
            self.stats.note_statuses([status]);
            if (200..300).contains(&status) {
                self.settle_entry(&job, i, response, sent_at_ms, &mut resend);
            } else if is_transient(status) {
                resend.push(i, [status]);
            } else {
                let reason = format!(
                    "{status}: {}",
                    outcome_text(&response["response"]["outcome"])
                );
                self.reject_entries(
                    &job,
                    &[i],
                    Some(status),
                    &reason,
                    Some(&response["response"]["outcome"]),
                );
            }
        }
        self.resend_or_grow(&job, &resend, waiting);
    }

    /// After an answer: grow the window when every entry settled, or resend
    /// the entries that failed for a passing reason (shrinking the window
    /// when the server pushed back).
    pub(super) fn resend_or_grow(
        &mut self,
        job: &Job,
        resend: &Resend,
        waiting: &mut VecDeque<Job>,
    ) {
        if resend.entries.is_empty() {
            self.window.grow();
            return;
        }
        if resend.throttled {
            self.window.shrink_for(job.sent_in);
        }
        let retry = Job {
            request: job.request.subset(&resend.entries),
            attempt: job.attempt,
            not_before: None,
            reauths: job.reauths,
            quota_waits: job.quota_waits,
            sent_in: job.sent_in,
            earlier: {
                // a resend that finds what an earlier answer wrote says
                // unchanged: the earliest, strongest outcome stands
                let mut earlier = job.earlier.clone();
                for &(at, outcome) in &resend.earlier {
                    earlier
                        .entry(at)
                        .and_modify(|o| *o = strongest(*o, outcome))
                        .or_insert(outcome);
                }
                earlier
            },
        };
        if resend.quota_only() {
            // the server ran out of quota part-way through the bundle
            self.wait_for_quota(retry, None, waiting);
        } else {
            let why = format!(
                "{} entries failed for a passing reason",
                resend.entries.len()
            );
            self.retry(retry, None, why, waiting);
        }
    }

    /// Settles what the resolver decided without a write: stored
    /// unchanged, or refused before sending.
    pub(super) fn settle_resolved_before(&self, job: &Job, resolution: &Resolution) {
        let request = &job.request;
        for &(entry, op) in &resolution.unchanged {
            let group = &request.groups[request.entries[entry].group];
            self.settle(
                job,
                entry,
                op,
                &group.resource_types[op],
                Outcome::Unchanged,
                None,
            );
        }
        for (entry, reason) in &resolution.rejected {
            self.reject_entries(job, &[*entry], None, reason, None);
        }
    }

    /// A 2xx answer to a resolved write: settle by what was sent, resend
    /// the entries that failed for a passing reason (they resolve again).
    pub(super) fn answered_resolved(
        &mut self,
        job: Job,
        resolution: Resolution,
        body: &Value,
        sent_at_ms: Option<i64>,
        waiting: &mut VecDeque<Job>,
    ) {
        self.settle_resolved_before(&job, &resolution);
        let Some(write) = &resolution.write else {
            self.window.grow();
            return;
        };
        let responses: Vec<&Value> = match write.kind {
            // a lone transaction's answer is the transaction-response
            RequestKind::Transaction => vec![body],
            _ => body["entry"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default(),
        };
        if responses.len() != write.sent.len() {
            let reason = format!(
                "the server answered {} entries for a bundle of {}; nothing can be assumed written",
                responses.len(),
                write.sent.len()
            );
            let which: Vec<usize> = write.sent.iter().map(|s| s.entry).collect();
            self.reject_entries(&job, &which, None, &reason, Some(body));
            return;
        }
        let mut resend = Resend::default();
        for (sent, response) in write.sent.iter().zip(responses) {
            let inner: Vec<&Value> = if write.kind == RequestKind::Transaction {
                response["entry"]
                    .as_array()
                    .map(|a| a.iter().collect())
                    .unwrap_or_default()
            } else if write.kind == RequestKind::BatchOfTransactions {
                let status = entry_status(response);
                self.stats.note_statuses([status]);
                if !(200..300).contains(&status) {
                    if entry_resent(status, sent.from_ledger) {
                        resend.push(sent.entry, [status]);
                    } else {
                        let outcome = &response["response"]["outcome"];
                        let reason = format!("{status}: {}", outcome_text(outcome));
                        self.reject_entries(
                            &job,
                            &[sent.entry],
                            Some(status),
                            &reason,
                            Some(outcome),
                        );
                    }
                    continue;
                }
                response["resource"]["entry"]
                    .as_array()
                    .map(|a| a.iter().collect())
                    .unwrap_or_default()
            } else {
                vec![response]
            };
            if inner.len() != sent.ops.len() {
                let reason = format!(
                    "the server answered {} entries for a transaction of {}; it may be partially written",
                    inner.len(),
                    sent.ops.len()
                );
                self.reject_entries(&job, &[sent.entry], None, &reason, Some(response));
                continue;
            }
            if write.kind == RequestKind::Batch {
                // a plain entry: written, or failed alone
                let status = entry_status(inner[0]);
                self.stats.note_statuses([status]);
                if (200..300).contains(&status) {
                    self.settle_written(&job, sent, 0, inner[0], sent_at_ms);
                } else if entry_resent(status, sent.from_ledger) {
                    resend.push(sent.entry, [status]);
                } else {
                    let outcome = &inner[0]["response"]["outcome"];
                    let reason = format!("{status}: {}", outcome_text(outcome));
                    self.reject_entries(&job, &[sent.entry], Some(status), &reason, Some(outcome));
                }
                continue;
            }
            let from_ledger = sent.from_ledger;
            let resendable = |s: u16| entry_resent(s, from_ledger);
            self.settle_verdict(&job, sent, &inner, sent_at_ms, resendable, &mut resend);
        }
        self.resend_or_grow(&job, &resend, waiting);
    }

    /// Tells the resolver the id the server gave a written operation.
    pub(super) fn remember_id(&self, sent: &resolve::SentEntry, k: usize, response: &Value) {
        if let (Some(resolver), Some(identity)) = (&self.resolver, &sent.identities[k]) {
            match resolve::answered_id(response) {
                Some(id) => resolver.created(identity, &id),
                // an id the answer does not give cannot be remembered
                None => resolver.distrust_system(identity),
            }
        }
    }

    /// Settles one written operation of a resolved write and remembers its id.
    pub(super) fn settle_written(
        &self,
        job: &Job,
        sent: &resolve::SentEntry,
        k: usize,
        response: &Value,
        sent_at_ms: Option<i64>,
    ) {
        let request = &job.request;
        let op = sent.ops[k];
        let group = &request.groups[request.entries[sent.entry].group];
        let outcome = entry_outcome(Some(response), sent_at_ms).unwrap_or(Outcome::Updated);
        self.remember_id(sent, k, response);
        self.settle(
            job,
            sent.entry,
            op,
            &group.resource_types[op],
            outcome,
            Some(response),
        );
    }

    /// A transaction answered with mixed statuses: it was not atomic. What
    /// the server wrote is settled as written; the rest is rejected with
    /// the group named partially written, never assumed.
    pub(super) fn partially_written(
        &self,
        job: &Job,
        sent: &resolve::SentEntry,
        inner: &[&Value],
        sent_at_ms: Option<i64>,
    ) {
        let request = &job.request;
        let entry = &request.entries[sent.entry];
        let group = &request.groups[entry.group];
        let written = inner
            .iter()
            .filter(|r| (200..300).contains(&entry_status(r)))
            .count();
        let text = String::from_utf8_lossy(&request.body[entry.range.clone()]).into_owned();
        let mut first = true;
        for (k, r) in inner.iter().enumerate() {
            let status = entry_status(r);
            if (200..300).contains(&status) {
                self.settle_written(job, sent, k, r, sent_at_ms);
                continue;
            }
            let op = sent.ops[k];
            let outcome = &r["response"]["outcome"];
            let reason = format!(
                "the transaction was not atomic: {written} of its {} resources were written and its {} failed ({status}: {}); the record is partially written, run again to complete it (on Medplum, enable the project's transaction-bundles feature for atomic transactions)",
                inner.len(),
                group.resource_types[op],
                outcome_text(outcome)
            );
            self.reject_op(
                job,
                group,
                op,
                first,
                Some(status),
                reason,
                &text,
                Some(outcome),
            );
            first = false;
        }
    }

    pub(super) fn settle_entry(
        &self,
        job: &Job,
        index: usize,
        response: &Value,
        sent_at_ms: Option<i64>,
        resend: &mut Resend,
    ) {
        let request = &job.request;
        let entry = &request.entries[index];
        let types = &request.groups[entry.group].resource_types;
        if request.kind == RequestKind::BatchOfTransactions {
            let inner = response["resource"]["entry"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            self.settle_transaction(job, index, inner, &response["resource"], sent_at_ms, resend);
        } else {
            let outcome = entry_outcome(Some(response), sent_at_ms).unwrap_or(Outcome::Updated);
            self.settle(
                job,
                index,
                entry.first_op,
                &types[entry.first_op],
                outcome,
                Some(response),
            );
        }
    }

    /// Settles a transaction's answer (see [`transaction_verdict`]): all
    /// written, sent again whole, partially written (a server that ran it
    /// as a batch), or refused.
    pub(super) fn settle_transaction(
        &self,
        job: &Job,
        index: usize,
        inner: &[Value],
        whole: &Value,
        sent_at_ms: Option<i64>,
        resend: &mut Resend,
    ) {
        let entry = &job.request.entries[index];
        let sent = resolve::SentEntry {
            entry: index,
            ops: (entry.first_op..entry.first_op + entry.operations).collect(),
            identities: vec![None; entry.operations],
            from_ledger: false,
        };
        let inner: Vec<&Value> = inner.iter().collect();
        if inner.len() != entry.operations {
            let reason = format!(
                "the server answered {} entries for a transaction of {}; it may be partially written",
                inner.len(),
                entry.operations
            );
            self.reject_entries(job, &[index], None, &reason, Some(whole));
            return;
        }
        self.settle_verdict(job, &sent, &inner, sent_at_ms, is_transient, resend);
    }

    /// Acts on a transaction's answer, `inner` entry for entry, whichever
    /// path sent it; `resendable` says which failures pass.
    pub(super) fn settle_verdict(
        &self,
        job: &Job,
        sent: &resolve::SentEntry,
        inner: &[&Value],
        sent_at_ms: Option<i64>,
        resendable: impl Fn(u16) -> bool,
        resend: &mut Resend,
    ) {
        let statuses: Vec<u16> = inner.iter().map(|r| entry_status(r)).collect();
        self.stats.note_statuses(statuses.iter().copied());
        let group = &job.request.groups[job.request.entries[sent.entry].group];
        // what was written may be written again only when every write of
        // it is keyed on an identifier (a bare POST would be repeated)
        let idempotent = sent
            .ops
            .iter()
            .all(|&op| group.identities.get(op).is_some_and(Option::is_some));
        match transaction_verdict(&statuses, idempotent, resendable) {
            Verdict::Written => {
                for (k, r) in inner.iter().enumerate() {
                    self.settle_written(job, sent, k, r, sent_at_ms);
                }
            }
            Verdict::Resend => {
                // what landed is remembered, so the resend (which finds it
                // stored) still counts it created or updated
                for (k, r) in inner.iter().enumerate() {
                    if let Some(outcome) = entry_outcome(Some(r), sent_at_ms) {
                        resend.earlier.push(((group.seq, sent.ops[k]), outcome));
                        // and the resolver knows it is stored now: the
                        // resend searches it instead of taking the
                        // empty-system shortcut and creating it again
                        self.remember_id(sent, k, r);
                    }
                }
                resend.push(sent.entry, statuses);
            }
            Verdict::Partial => self.partially_written(job, sent, inner, sent_at_ms),
            Verdict::Refused => {
                let outcome = &inner[0]["response"]["outcome"];
                let reason = format!("{}: {}", statuses[0], outcome_text(outcome));
                self.reject_entries(
                    job,
                    &[sent.entry],
                    Some(statuses[0]),
                    &reason,
                    Some(outcome),
                );
            }
        }
    }

    pub(super) fn settle(
        &self,
        job: &Job,
        entry: usize,
        op: usize,
        resource_type: &str,
        outcome: Outcome,
        response: Option<&Value>,
    ) {
        let request = &job.request;
        let group = &request.groups[request.entries[entry].group];
        // an earlier answer to this request wrote it: the resend found it
        let outcome = match job.earlier.get(&(group.seq, op)) {
            Some(&earlier) if outcome != Outcome::Rejected => strongest(earlier, outcome),
            _ => outcome,
        };
        let server_id = response.and_then(resolve::answered_id);
        let version = response.and_then(|r| {
            let etag = r["response"]["etag"].as_str()?;
            Some(etag.trim_start_matches("W/").trim_matches('"').to_owned())
        });
        self.stats.settled.fetch_add(1, Ordering::Relaxed);
        let _ = self.settled.send(Settled {
            seq: group.seq,
            op,
            identity: group.identities.get(op).cloned().flatten(),
            hash: group.hashes.get(op).copied().unwrap_or_default(),
            server_id,
            version,
            stream: request.stream.clone(),
            key: group.key.clone(),
            provenance: group.provenance.clone(),
            resource_type: resource_type.to_owned(),
            outcome,
            retries: job.attempt,
            reject_line: false,
            status: None,
            reason: String::new(),
            entry: None,
            server_outcome: None,
        });
    }

    /// Rejects the whole request and stops the run: what no retry can fix
    /// (refused credentials, a redirect).
    pub(super) fn stop_run(&self, job: &Job, status: u16, why: String, outcome: Option<&Value>) {
        let n = job.request.entries.len();
        self.reject_entries(
            job,
            &(0..n).collect::<Vec<_>>(),
            Some(status),
            &why,
            outcome,
        );
        self.fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(why);
    }

    pub(super) fn reject_entries(
        &self,
        job: &Job,
        which: &[usize],
        status: Option<u16>,
        reason: &str,
        outcome: Option<&Value>,
    ) {
        let request = &job.request;
        for &i in which {
            let entry = &request.entries[i];
            let group = &request.groups[entry.group];
            let text = String::from_utf8_lossy(&request.body[entry.range.clone()]).into_owned();
            let reason = if status == Some(412) {
                let searches: Vec<String> = (0..entry.operations)
                    .filter_map(|k| group.identities.get(entry.first_op + k).cloned().flatten())
                    .map(|id| id.search_url())
                    .collect();
                explain_412(reason, &searches)
            } else {
                reason.to_owned()
            };
            for k in 0..entry.operations {
                let op = entry.first_op + k;
                let reason = reason.clone();
                self.reject_op(job, group, op, k == 0, status, reason, &text, outcome);
            }
        }
    }

    /// Reports one operation rejected; the first of its record carries the
    /// request entry and the server's OperationOutcome for the rejects file.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reject_op(
        &self,
        job: &Job,
        group: &fhirlift_core::planner::GroupRef,
        op: usize,
        first: bool,
        status: Option<u16>,
        reason: String,
        entry_text: &str,
        outcome: Option<&Value>,
    ) {
        self.stats.settled.fetch_add(1, Ordering::Relaxed);
        let _ = self.settled.send(Settled {
            seq: group.seq,
            op,
            identity: group.identities.get(op).cloned().flatten(),
            hash: group.hashes.get(op).copied().unwrap_or_default(),
            server_id: None,
            version: None,
            stream: job.request.stream.clone(),
            key: group.key.clone(),
            provenance: group.provenance.clone(),
            resource_type: group.resource_types[op].clone(),
            outcome: Outcome::Rejected,
            retries: job.attempt,
            reject_line: first,
            status,
            reason,
            entry: first.then(|| entry_text.to_owned()),
            server_outcome: first.then(|| outcome.cloned()).flatten(),
        });
    }
}
