//! Progress bars on a terminal: one line per stream with records, rates,
//! requests in flight, retries, writes and rejects. Counts only.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fhirlift_pipeline::{ProgressObserver, StreamSummary};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Live bars, one per stream, redrawn at most ten times a second.
pub struct BarProgress {
    multi: MultiProgress,
    bars: HashMap<String, (ProgressBar, Instant)>,
    last_draw: Instant,
}

impl BarProgress {
    pub fn new() -> BarProgress {
        BarProgress {
            multi: MultiProgress::new(),
            bars: HashMap::new(),
            last_draw: Instant::now(),
        }
    }

    fn message(summary: &StreamSummary, started: Instant, activity: Option<(u64, u64)>) -> String {
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let mut text = format!(
            "{} records ({:.0}/s), {} requests",
            summary.records,
            summary.records as f64 / secs,
            summary.requests
        );
        if let Some((in_flight, retries)) = activity {
            text.push_str(&format!(
                ", {in_flight} in flight, {retries} retries, {} written",
                summary.written_count()
            ));
        }
        if summary.rejected > 0 {
            text.push_str(&format!(", {} rejected", summary.rejected));
        }
        text
    }
}

impl ProgressObserver for BarProgress {
    fn stream_started(&mut self, summary: &StreamSummary) {
        let bar = self.multi.add(ProgressBar::new_spinner());
        let style = ProgressStyle::with_template("{spinner} phase {prefix} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_prefix(format!("{} {}", summary.phase, summary.stream));
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bars
            .insert(summary.stream.clone(), (bar, Instant::now()));
    }

    fn update(&mut self, summary: &StreamSummary, activity: Option<(u64, u64)>) {
        if self.last_draw.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last_draw = Instant::now();
        if let Some((bar, started)) = self.bars.get(&summary.stream) {
            bar.set_message(Self::message(summary, *started, activity));
        }
    }

    fn stream_done(&mut self, summary: &StreamSummary) {
        if let Some((bar, started)) = self.bars.get(&summary.stream) {
            bar.finish_with_message(Self::message(summary, *started, None) + ", done");
        }
    }
}
