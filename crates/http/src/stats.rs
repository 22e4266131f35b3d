//! The sender's live counters, read by progress lines and the summary.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, for progress lines.
#[derive(Debug, Default)]
pub struct SenderStats {
    pub requests: AtomicU64,
    /// Bundles posted (retries included).
    pub writes: AtomicU64,
    /// Searches made by the resolver (counts and pages included).
    pub searches: AtomicU64,
    pub in_flight: AtomicU64,
    pub retries: AtomicU64,
    pub window: AtomicU64,
    /// Requests that waited for a server quota's window (429s).
    pub quota_waits: AtomicU64,
    /// Operations whose outcome is settled (written, unchanged, rejected).
    pub settled: AtomicU64,
    /// Answers (a request's, or an entry's inside a bundle's answer) with
    /// status 429, 409, or 5xx.
    pub throttled: AtomicU64,
    pub conflicts: AtomicU64,
    pub server_errors: AtomicU64,
}

impl SenderStats {
    /// Counts the statuses worth watching over time: 429, 409, 5xx.
    pub(crate) fn note_statuses(&self, statuses: impl IntoIterator<Item = u16>) {
        for status in statuses {
            let counter = match status {
                429 => &self.throttled,
                409 => &self.conflicts,
                500..=599 => &self.server_errors,
                _ => continue,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}
