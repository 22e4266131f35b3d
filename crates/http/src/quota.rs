//! Server quotas: reading Medplum's `RateLimit` header and pacing the
//! sender to it.
//!
//! Medplum answers every request with
//! `RateLimit: "requests";r=<remaining>;t=<seconds left in the window>,
//! "fhirInteractions";r=…;t=…`; a client over its quota gets 429 (without
//! `Retry-After`), and inside a batch every entry from the one that ran out
//! onward gets 429. A quota is a fixed window: what is refused now is
//! allowed once the window resets. So waiting for the window is never a
//! failure, and the cheapest way through a quota is to spend it steadily
//! and pause until the reset when it is spent, rather than to burst into
//! 429s and resend.
//!
//! [`Pacer`] keeps what the answers said: the tightest quota's remaining
//! units and reset, the cost of one bundle entry (learned as the units
//! spent in the window over the entries answered in it), and the pause in
//! force. The dispatcher asks it before each new request whether the
//! quota left can pay for what is in flight plus one more request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One limit of a `RateLimit` header: `"fhirInteractions";r=400;t=30`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Quota {
    pub name: String,
    pub remaining: u64,
    /// The time left in the quota's current window.
    pub reset: Duration,
}

/// Reads Medplum's `RateLimit: "requests";r=…;t=…, "fhirInteractions";r=…;t=…`.
pub(super) fn parse_ratelimit(header: &str) -> Vec<Quota> {
    header
        .split(',')
        .filter_map(|limit| {
            let mut parts = limit.split(';');
            let name = parts.next()?.trim().trim_matches('"').to_owned();
            let (mut remaining, mut reset) = (None, None);
            for part in parts {
                match part.trim().split_once('=') {
                    Some(("r", v)) => remaining = v.trim().parse::<u64>().ok(),
                    Some(("t", v)) => reset = v.trim().parse::<u64>().ok(),
                    _ => {}
                }
            }
            Some(Quota {
                name,
                remaining: remaining?,
                reset: Duration::from_secs(reset?),
            })
        })
        .collect()
}

/// What an answer's quotas ask of the dispatcher.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Observed {
    /// A quota is under a tenth of the most it was seen to hold.
    pub low: bool,
    /// A quota is spent: nothing goes out before this long.
    pub pause: Option<Duration>,
}

/// The tightest quota seen in the current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    name_peak: u64,
    remaining: u64,
    resets_at: Instant,
    /// Entries answered since this window started.
    entries: u64,
}

/// The quota state the dispatcher paces by. See the module documentation.
#[derive(Debug, Default)]
pub(super) struct Pacer {
    /// The most remaining seen per quota name: the quota's size.
    peaks: HashMap<String, u64>,
    window: Option<Window>,
    /// Nothing new is sent before this.
    paused_until: Option<Instant>,
}

/// A jump of the reset instant by more than this starts a new window.
const NEW_WINDOW: Duration = Duration::from_secs(2);

impl Pacer {
    /// Reads the quotas of an answer to a request of `entries` entries.
    pub fn observe(&mut self, quotas: &[Quota], entries: usize, now: Instant) -> Observed {
        let mut observed = Observed::default();
        let mut tightest: Option<(&Quota, u64)> = None;
        for q in quotas {
            let peak = self.peaks.entry(q.name.clone()).or_insert(q.remaining);
            *peak = (*peak).max(q.remaining);
            if q.remaining == 0 {
                observed.pause = Some(observed.pause.unwrap_or_default().max(q.reset));
            } else if q.remaining * 10 < *peak {
                observed.low = true;
            }
            // the tightest quota is the one with the least left of its size
            let share = |q: &Quota, peak: u64| q.remaining as f64 / peak.max(1) as f64;
            if tightest.is_none_or(|(t, p)| share(q, *peak) < share(t, p)) {
                tightest = Some((q, *peak));
            }
        }
        if let Some((q, peak)) = tightest {
            let resets_at = now + q.reset;
            // answers of one window name one reset instant (to the second)
            let current = self.window.filter(|w| {
                resets_at.saturating_duration_since(w.resets_at) < NEW_WINDOW
                    && w.resets_at.saturating_duration_since(resets_at) < NEW_WINDOW
            });
            self.window = Some(match current {
                // answers arrive out of order: the least remaining is the latest
                Some(w) => Window {
                    name_peak: peak,
                    remaining: w.remaining.min(q.remaining),
                    resets_at: w.resets_at,
                    entries: w.entries + entries as u64,
                },
                None => Window {
                    name_peak: peak,
                    remaining: q.remaining,
                    resets_at,
                    entries: entries as u64,
                },
            });
        }
        if let Some(p) = observed.pause {
            self.pause_for(p, now);
        }
        observed
    }

    /// Pauses sending until `now + wait` (never shortening a pause).
    pub fn pause_for(&mut self, wait: Duration, now: Instant) {
        let until = now + wait;
        if self.paused_until.is_none_or(|t| t < until) {
            tracing::info!(
                seconds = wait.as_secs(),
                "a server quota is used up: pausing until its window resets"
            );
            self.paused_until = Some(until);
        }
    }

    /// When the pause in force ends, if one is.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.paused_until.filter(|t| *t > now)
    }

    /// How long a request refused for the quota (a 429) waits: the server's
    /// `Retry-After`, else the pause in force, else until the tightest
    /// quota's window resets; `None` when no answer said.
    pub fn wait_after_429(
        &mut self,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Option<Duration> {
        let wait = retry_after
            .or_else(|| self.paused_until(now).map(|t| t - now))
            .or_else(|| {
                self.window
                    .map(|w| w.resets_at.saturating_duration_since(now))
                    .filter(|d| !d.is_zero())
            })?;
        self.pause_for(wait, now);
        Some(wait)
    }

    /// The units one bundle entry costs, as learned in this window: the
    /// units spent over the entries answered. Counts what is still in
    /// flight as spent by the answered, so it errs on the high side.
    fn cost_per_entry(&self) -> Option<f64> {
        let w = self.window?;
        let spent = w.name_peak.saturating_sub(w.remaining);
        (w.entries >= 10 && spent > 0).then(|| spent as f64 / w.entries as f64)
    }

    /// Whether one more request of `entries` entries may go out now, with
    /// `in_flight` entries already sent: false (and a pause until the
    /// window resets) when the quota left cannot pay for them.
    pub fn admits(&mut self, entries: usize, in_flight: usize, now: Instant) -> bool {
        if self.paused_until(now).is_some() {
            return false;
        }
        let (Some(w), Some(cost)) = (self.window, self.cost_per_entry()) else {
            return true;
        };
        if w.resets_at <= now {
            return true;
        }
        let needed = cost * (entries + in_flight) as f64;
        if (w.remaining as f64) >= needed {
            return true;
        }
        if in_flight == 0 && (w.remaining as f64) >= cost {
            // a request larger than what is left still starts: the server
            // writes what the quota allows and answers 429 for the rest
            return true;
        }
        let wait = w.resets_at.saturating_duration_since(now);
        self.pause_for(wait, now);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str, remaining: u64, reset: u64) -> Quota {
        Quota {
            name: name.into(),
            remaining,
            reset: Duration::from_secs(reset),
        }
    }

    #[test]
    fn ratelimit_headers_are_read_per_quota() {
        let q2 = parse_ratelimit(r#""requests";r=10;t=5, "fhirInteractions";r=0;t=42"#);
        assert_eq!(q2.len(), 2);
        assert_eq!(q2[1], q("fhirInteractions", 0, 42));
        assert!(parse_ratelimit("garbage").is_empty());
    }

    #[test]
    fn a_spent_quota_pauses_until_its_window_resets() {
        let now = Instant::now();
        let mut p = Pacer::default();
        let seen = p.observe(
            &[q("requests", 900, 50), q("fhirInteractions", 0, 41)],
            100,
            now,
        );
        assert_eq!(seen.pause, Some(Duration::from_secs(41)));
        assert_eq!(p.paused_until(now), Some(now + Duration::from_secs(41)));
        assert!(!p.admits(100, 0, now));
        assert!(p.paused_until(now + Duration::from_secs(42)).is_none());
    }

    #[test]
    fn a_429_without_retry_after_waits_for_the_tightest_window() {
        let now = Instant::now();
        let mut p = Pacer::default();
        p.observe(
            &[
                q("requests", 100_000, 50),
                q("fhirInteractions", 30_000, 20),
            ],
            100,
            now,
        );
        p.observe(
            &[q("requests", 99_999, 50), q("fhirInteractions", 40, 20)],
            100,
            now,
        );
        assert_eq!(p.wait_after_429(None, now), Some(Duration::from_secs(20)));
        assert_eq!(
            p.wait_after_429(Some(Duration::from_secs(3)), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(Pacer::default().wait_after_429(None, now), None);
    }

    #[test]
    fn requests_are_held_when_the_quota_left_cannot_pay_for_them() {
        let now = Instant::now();
        let mut p = Pacer::default();
        // a 50,000-unit window: two answers of 100 entries spent 20,000
        p.observe(&[q("fhirInteractions", 50_000, 60)], 0, now);
        p.observe(&[q("fhirInteractions", 40_000, 59)], 100, now);
        p.observe(&[q("fhirInteractions", 30_000, 59)], 100, now);
        // 100 units an entry: 30,000 pays for 300 entries
        assert!(p.admits(100, 200, now));
        assert!(!p.admits(100, 300, now));
        assert!(p.paused_until(now).is_some());
    }

    #[test]
    fn a_new_window_forgets_what_the_last_one_spent() {
        let now = Instant::now();
        let mut p = Pacer::default();
        p.observe(&[q("fhirInteractions", 50_000, 10)], 0, now);
        p.observe(&[q("fhirInteractions", 100, 10)], 100, now);
        let later = now + Duration::from_secs(11);
        p.observe(&[q("fhirInteractions", 49_000, 60)], 10, later);
        assert!(p.admits(100, 0, later));
        assert!(
            p.admits(100, 300, later),
            "too few entries to learn a cost yet"
        );
    }
}
