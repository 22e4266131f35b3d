//! The adaptive window of requests in flight (AIMD).

/// The adaptive window: additive increase, multiplicative decrease. It
/// opens at up to 8 requests: a first load of a few bundles per phase
/// never grew past 2 or 3 from a start at 2, and on a real Medplum a start
/// at 8 loaded 500 patients (3,297 resources) in 5.4-6.1 s instead of
/// 6.2-6.6 s. A server that pushes back halves it at once.
pub(crate) struct Window {
    pub(crate) size: f64,
    pub(crate) max: f64,
}

impl Window {
    pub(crate) fn new(max: usize) -> Window {
        let max = max.max(1) as f64;
        Window {
            size: max.min(8.0),
            max,
        }
    }
    pub(crate) fn get(&self) -> usize {
        self.size.floor().max(1.0) as usize
    }
    pub(crate) fn grow(&mut self) {
        self.size = (self.size + 1.0 / self.size).min(self.max);
    }
    pub(crate) fn shrink(&mut self) {
        self.size = (self.size / 2.0).max(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_halves_and_grows_back_slowly() {
        let mut w = Window::new(8);
        assert_eq!(w.get(), 8);
        w.shrink();
        w.shrink();
        assert_eq!(w.get(), 2);
        for _ in 0..20 {
            w.grow();
        }
        assert!(w.get() >= 6);
        w.shrink();
        assert!(w.get() <= 4);
        for _ in 0..10 {
            w.shrink();
        }
        assert_eq!(w.get(), 1);
    }
}
