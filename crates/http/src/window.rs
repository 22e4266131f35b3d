//! The adaptive window of requests in flight (AIMD).

/// The adaptive window: additive increase, multiplicative decrease. It
/// opens at up to 8 requests: a first load of a few bundles per phase
/// never grew past 2 or 3 from a start at 2, and on a real Medplum a start
/// at 8 loaded 500 patients (3,297 resources) in 5.4-6.1 s instead of
/// 6.2-6.6 s. A server that pushes back halves it at once, once per
/// round: push-back on requests sent before the last halving was already
/// answered by it (as TCP halves once per window of data). Without that,
/// 1% of entries answered 409 halved the window on most answers of a
/// round and pinned it at 1 (the run report's chart showed it).
pub(crate) struct Window {
    pub(crate) size: f64,
    pub(crate) max: f64,
    /// Halvings so far: a request remembers the epoch it was sent in.
    pub(crate) epoch: u64,
}

impl Window {
    pub(crate) fn new(max: usize) -> Window {
        let max = max.max(1) as f64;
        Window {
            size: max.min(8.0),
            max,
            epoch: 0,
        }
    }
    pub(crate) fn get(&self) -> usize {
        self.size.floor().max(1.0) as usize
    }
    pub(crate) fn grow(&mut self) {
        self.size = (self.size + 1.0 / self.size).min(self.max);
    }
    /// Halves the window for push-back on a request sent in epoch
    /// `sent_in`, unless the window was halved since that request left.
    pub(crate) fn shrink_for(&mut self, sent_in: u64) {
        if sent_in < self.epoch {
            return;
        }
        self.size = (self.size / 2.0).max(1.0);
        self.epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_halves_and_grows_back_slowly() {
        let mut w = Window::new(8);
        assert_eq!(w.get(), 8);
        w.shrink_for(w.epoch);
        w.shrink_for(w.epoch);
        assert_eq!(w.get(), 2);
        for _ in 0..20 {
            w.grow();
        }
        assert!(w.get() >= 6);
        w.shrink_for(w.epoch);
        assert!(w.get() <= 4);
        for _ in 0..10 {
            w.shrink_for(w.epoch);
        }
        assert_eq!(w.get(), 1);
    }

    #[test]
    fn push_back_on_requests_of_one_round_halves_the_window_once() {
        let mut w = Window::new(8);
        let round = w.epoch;
        // eight requests sent in one round; five come back pushed back
        for _ in 0..5 {
            w.shrink_for(round);
        }
        assert_eq!(w.get(), 4);
        // a request sent after the halving can halve it again
        w.shrink_for(w.epoch);
        assert_eq!(w.get(), 2);
    }
}
