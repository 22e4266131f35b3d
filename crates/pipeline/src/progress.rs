//! Progress of a run, as it goes: counts only, never record data.

use std::time::{Duration, Instant};

use crate::summary::StreamSummary;

/// Watches a run: called as streams start, after every chunk of records,
/// and when a phase is answered. Counts only, never record data.
pub trait ProgressObserver {
    fn stream_started(&mut self, _summary: &StreamSummary) {}
    /// `activity`: requests in flight and retries so far, when sending.
    fn update(&mut self, summary: &StreamSummary, activity: Option<(u64, u64)>);
    fn stream_done(&mut self, _summary: &StreamSummary) {}
}

/// Progress as a log line every few seconds (when not on a terminal).
pub struct LogProgress {
    pub(crate) last: Instant,
    pub(crate) last_records: u64,
}

impl LogProgress {
    const EVERY: Duration = Duration::from_secs(5);

    pub fn new() -> LogProgress {
        LogProgress {
            last: Instant::now(),
            last_records: 0,
        }
    }
}

impl Default for LogProgress {
    fn default() -> Self {
        LogProgress::new()
    }
}

impl ProgressObserver for LogProgress {
    fn stream_started(&mut self, _summary: &StreamSummary) {
        self.last = Instant::now();
        self.last_records = 0;
    }

    fn update(&mut self, summary: &StreamSummary, activity: Option<(u64, u64)>) {
        let elapsed = self.last.elapsed();
        if elapsed < Self::EVERY {
            return;
        }
        let rate = (summary.records - self.last_records) as f64 / elapsed.as_secs_f64();
        let (in_flight, retries) = activity.unwrap_or_default();
        tracing::info!(
            stream = %summary.stream,
            records = summary.records,
            records_per_s = rate.round() as u64,
            requests = summary.requests,
            in_flight,
            retries,
            written = summary.written_count(),
            rejected = summary.rejected,
            "progress"
        );
        self.last = Instant::now();
        self.last_records = summary.records;
    }
}
