//! Reading a server's answers: which statuses pass, what a transaction's
//! entries add up to, what an entry did (created, updated, unchanged), and
//! the words a reject or a stopped run gives.

use serde_json::Value;

use fhirlift_core::transport::Outcome;

use crate::clock;

pub(crate) fn is_transient(status: u16) -> bool {
    matches!(status, 408 | 409 | 425 | 429 | 500 | 502 | 503 | 504)
}

/// A refusal of a write by a ledger-given id that may only mean the ledger
/// is stale (the resource was deleted, merged or moved on since): sent
/// again once, searching first (a retry never uses the ledger's ids). A
/// record the server refuses for itself fails again, then is rejected.
pub(crate) fn stale_ledger_id(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 401 | 403)
}

/// Whether an entry of a resolved write that failed with `status` is sent
/// again (searched first) rather than rejected: a passing failure, a 412
/// on a version read by a search, or a refusal of a ledger-given id.
pub(crate) fn entry_resent(status: u16, from_ledger: bool) -> bool {
    is_transient(status) || status == 412 || (from_ledger && stale_ledger_id(status))
}

/// The entries of an answer to send again, and why.
#[derive(Debug, Default)]
pub(crate) struct Resend {
    pub(crate) entries: Vec<usize>,
    /// The server pushed back (409 or 429): the window shrinks.
    pub(crate) throttled: bool,
    /// A failure among them other than the quota's 429.
    pub(crate) not_quota: bool,
    /// Operations that earlier answers wrote: see [`Job::earlier`].
    pub(crate) earlier: Vec<((u64, usize), Outcome)>,
}

impl Resend {
    /// Sends entry `entry` again; `statuses` are its answer's statuses.
    pub(crate) fn push(&mut self, entry: usize, statuses: impl IntoIterator<Item = u16>) {
        self.entries.push(entry);
        for s in statuses {
            self.throttled |= s == 429 || s == 409;
            self.not_quota |= s != 429 && !(200..300).contains(&s);
        }
    }

    /// Every entry failed only for the server's quota: a wait, not a failure.
    pub(crate) fn quota_only(&self) -> bool {
        !self.entries.is_empty() && !self.not_quota
    }
}

/// Of two answers about one write of this run, what it did: created over
/// updated over unchanged.
pub(crate) fn strongest(a: Outcome, b: Outcome) -> Outcome {
    let rank = |o: Outcome| match o {
        Outcome::Created => 3,
        Outcome::Updated => 2,
        Outcome::Unchanged => 1,
        Outcome::Rejected => 0,
    };
    if rank(a) >= rank(b) { a } else { b }
}

/// What becomes of a transaction, by its entries' statuses.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every entry written.
    Written,
    /// Sent again whole: every failure passes (`resendable`: 409, 429,
    /// 5xx...), and what was written may be written again (`idempotent`:
    /// keyed on identifiers, so the resend finds it).
    Resend,
    /// Some written, the rest failed for good (or a bare create was
    /// written): the record is partially written.
    Partial,
    /// Nothing written, for a reason that does not pass.
    Refused,
}

pub(crate) fn transaction_verdict(
    statuses: &[u16],
    idempotent: bool,
    resendable: impl Fn(u16) -> bool,
) -> Verdict {
    let ok = |s: &u16| (200..300).contains(s);
    let written = statuses.iter().filter(|s| ok(s)).count();
    let failures_pass = statuses.iter().all(|s| ok(s) || resendable(*s));
    if written == statuses.len() {
        Verdict::Written
    } else if failures_pass && (written == 0 || idempotent) {
        Verdict::Resend
    } else if written > 0 {
        Verdict::Partial
    } else {
        Verdict::Refused
    }
}

pub(crate) fn entry_status(response: &Value) -> u16 {
    response["response"]["status"]
        .as_str()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Created, updated or unchanged, from an entry's status and lastModified.
pub(crate) fn entry_outcome(response: Option<&Value>, sent_at_ms: Option<i64>) -> Option<Outcome> {
    let response = response?;
    match entry_status(response) {
        201 => Some(Outcome::Created),
        200 => {
            let modified = response["response"]["lastModified"]
                .as_str()
                .or(response["resource"]["meta"]["lastUpdated"].as_str())
                .and_then(clock::parse_instant_ms);
            // last modified before this request left (by the server's clock): not written now
            match (modified, sent_at_ms) {
                (Some(m), Some(sent)) if m < sent => Some(Outcome::Unchanged),
                _ => Some(Outcome::Updated),
            }
        }
        _ => None,
    }
}

/// The text of an OperationOutcome's issues.
pub(crate) fn outcome_text(outcome: &Value) -> String {
    let issues: Vec<String> = outcome["issue"]
        .as_array()
        .map(|issues| {
            issues
                .iter()
                .map(|i| {
                    i["details"]["text"]
                        .as_str()
                        .or(i["diagnostics"].as_str())
                        .or(i["code"].as_str())
                        .unwrap_or("no details")
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    if issues.is_empty() {
        "no OperationOutcome".into()
    } else {
        issues.join("; ")
    }
}

/// A 412 on a conditional write: its search matched more than one resource.
/// Says so, with the searches that find them and what to do.
pub(crate) fn explain_412(reason: &str, searches: &[String]) -> String {
    format!(
        "{reason}. A conditional write found more than one resource for its identifier, so \
         the server would not choose: search {} to see them, then merge or retire the \
         duplicates on the server, or give the mapping a first identifier that names one \
         resource (with its authority and type); --strategy resolve names the matching ids",
        if searches.is_empty() {
            "the identifiers of this record (in the request above)".to_owned()
        } else {
            searches.join(", ")
        }
    )
}

/// Whether a body is what a batch or transaction is answered with.
pub(crate) fn is_response_bundle(body: &Value) -> bool {
    body["resourceType"] == "Bundle"
        && matches!(
            body["type"].as_str(),
            Some("batch-response" | "transaction-response")
        )
}

/// A body, said in a few words for an error (never its content).
pub(crate) fn describe_body(body: &Value) -> String {
    match body {
        Value::Null => "an empty or non-JSON body".to_owned(),
        Value::Object(o) => match o.get("resourceType").and_then(Value::as_str) {
            Some("Bundle") => format!(
                "a Bundle of type {}",
                o.get("type").and_then(Value::as_str).unwrap_or("(none)")
            ),
            Some(t) => format!("a {t}"),
            None => "JSON that is not a FHIR resource".to_owned(),
        },
        _ => "JSON that is not a FHIR resource".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_whose_failures_pass_is_sent_again_whole_unless_a_bare_create_landed() {
        let v =
            |statuses: &[u16], idempotent| transaction_verdict(statuses, idempotent, is_transient);
        assert_eq!(v(&[201, 200], true), Verdict::Written);
        // Medplum without transaction-bundles: one entry lost a serialization race
        assert_eq!(v(&[201, 409], true), Verdict::Resend);
        assert_eq!(v(&[200, 429], true), Verdict::Resend);
        assert_eq!(v(&[409, 409], false), Verdict::Resend);
        // a bare POST that landed would be repeated
        assert_eq!(v(&[201, 409], false), Verdict::Partial);
        assert_eq!(v(&[201, 400], true), Verdict::Partial);
        assert_eq!(v(&[400, 409], true), Verdict::Refused);
    }
}
