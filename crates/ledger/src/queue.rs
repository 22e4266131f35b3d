//! The queue of changes a ledger holds in memory until its next commit.

use std::collections::HashMap;

use crate::Acknowledged;

/// A queued change of a stream's row.
#[derive(Default)]
pub(crate) struct StreamChange {
    /// `Some(Some(..))` sets the mark, `Some(None)` clears it.
    pub(crate) mark: Option<Option<(String, u64)>>,
    pub(crate) pending: Option<u64>,
}

pub(crate) enum RecordEnd {
    Done,
    Rejected { provenance: String, reason: String },
}

/// What `commit` will write, in memory.
#[derive(Default)]
pub(crate) struct Queue {
    /// Acknowledgements, one per identity (a later one replaces an earlier).
    pub(crate) acks: Vec<(String, String, String, Acknowledged)>,
    pub(crate) ack_index: HashMap<String, usize>,
    /// How records ended, in order; the `usize` indexes `streams`.
    pub(crate) records: Vec<(usize, String, RecordEnd)>,
    /// Every stream the queue touches, with its queued row changes.
    pub(crate) streams: Vec<(String, StreamChange)>,
}

impl Queue {
    pub(crate) fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.records.is_empty() && self.streams.is_empty()
    }

    pub(crate) fn stream(&mut self, stream: &str) -> usize {
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
pub(crate) fn ack_key(resource_type: &str, system: &str, value: &str) -> String {
    format!(
        "{}:{resource_type}{}:{system}{value}",
        resource_type.len(),
        system.len()
    )
}
