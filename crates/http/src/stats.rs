//! The sender's live counters, read by progress lines and the summary.

use std::sync::atomic::AtomicU64;

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
}
