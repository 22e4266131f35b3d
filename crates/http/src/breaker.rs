//! The circuit breaker: a server that has not answered for a while stops
//! the run instead of having every record rejected.
//!
//! A dead server (connection refused), one that refuses TLS, or a silent
//! one (every request times out) would otherwise have each request tried
//! `--max-attempts` times and then its records rejected, through the whole
//! source: hours, and a rejects file full of patient records. The breaker
//! trips when requests keep failing without any answer (at least
//! [`MIN_FAILURES`] in a row, and no HTTP answer of any status for
//! `give_up_after`); the sender then drops what it holds without rejecting
//! it, and the run stops with exit 1. The ledger keeps what was
//! acknowledged, so the same command resumes once the server is back.

use std::time::{Duration, Instant};

/// Failures in a row before the breaker may trip (one bad connection is
/// not a dead server).
pub const MIN_FAILURES: u32 = 3;

#[derive(Debug)]
pub struct Breaker {
    give_up_after: Duration,
    last_answer: Instant,
    failures: u32,
    last_failure: String,
}

impl Breaker {
    pub fn new(give_up_after: Duration) -> Breaker {
        Breaker {
            give_up_after,
            last_answer: Instant::now(),
            failures: 0,
            last_failure: String::new(),
        }
    }

    /// The server answered (any status: it is there).
    pub fn answered(&mut self) {
        self.last_answer = Instant::now();
        self.failures = 0;
    }

    /// A request got no answer (refused, reset, TLS, timeout). Returns why
    /// the run stops, when the breaker trips.
    pub fn failed(&mut self, why: &str) -> Option<String> {
        self.failures += 1;
        self.last_failure = why.to_owned();
        let silent = self.last_answer.elapsed();
        (self.failures >= MIN_FAILURES && silent >= self.give_up_after).then(|| {
            format!(
                "the server has not answered for {} s ({} requests in a row got no answer; the \
                 last: {}). Nothing was rejected for it: the ledger keeps what the server \
                 acknowledged, and the same command resumes once the server is back \
                 (--give-up-after sets how long to wait)",
                silent.as_secs(),
                self.failures,
                self.last_failure
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_trips_only_after_failures_in_a_row_and_time_without_an_answer() {
        let mut b = Breaker::new(Duration::ZERO);
        assert_eq!(b.failed("refused"), None);
        assert_eq!(b.failed("refused"), None);
        b.answered();
        assert_eq!(b.failed("refused"), None);
        assert_eq!(b.failed("refused"), None);
        let why = b.failed("connection refused").unwrap();
        assert!(
            why.contains("3 requests in a row") && why.contains("connection refused"),
            "{why}"
        );
        let mut patient = Breaker::new(Duration::from_secs(3600));
        for _ in 0..10 {
            assert_eq!(patient.failed("timed out"), None);
        }
    }
}
