//! The run's traffic over time: counters read at a fixed interval on a
//! thread of their own (a handful of atomic loads a second: nothing the
//! run would notice). Memory stays flat: past [`MOST_SAMPLES`] samples,
//! every other one is dropped and the interval doubles.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The most samples kept, whatever the run's length.
const MOST_SAMPLES: usize = 1_200;

/// The counters at one moment (cumulative ones since the run began).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Counters {
    /// Operations settled (written, unchanged or rejected).
    pub settled: u64,
    pub requests: u64,
    pub in_flight: u64,
    pub window: u64,
    pub retries: u64,
    pub quota_waits: u64,
    pub throttled: u64,
    pub conflicts: u64,
    pub server_errors: u64,
}

/// The counters, `t` seconds after the run began.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Sample {
    pub t: f64,
    #[serde(flatten)]
    pub counters: Counters,
}

/// Samples `read` every `every` until [`Recorder::finish`].
pub struct Recorder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl Recorder {
    pub fn start(every: Duration, mut read: impl FnMut() -> Counters + Send + 'static) -> Recorder {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("report-timeline".into())
            .spawn(move || {
                let started = Instant::now();
                let mut every = every.max(Duration::from_millis(10));
                let mut samples = vec![Sample {
                    t: 0.0,
                    counters: read(),
                }];
                let mut next = started + every;
                loop {
                    // short sleeps, so that finish() is not kept waiting
                    while Instant::now() < next {
                        if stopping.load(Ordering::Relaxed) {
                            samples.push(Sample {
                                t: started.elapsed().as_secs_f64(),
                                counters: read(),
                            });
                            return samples;
                        }
                        std::thread::sleep((next - Instant::now()).min(Duration::from_millis(50)));
                    }
                    samples.push(Sample {
                        t: started.elapsed().as_secs_f64(),
                        counters: read(),
                    });
                    if samples.len() >= MOST_SAMPLES {
                        thin(&mut samples);
                        every *= 2;
                    }
                    next += every;
                }
            })
            .ok();
        Recorder { stop, thread }
    }

    /// Stops sampling: every sample, the last one taken now.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// Keeps every other sample (the first and the last always).
fn thin(samples: &mut Vec<Sample>) {
    let last = samples.last().copied();
    let mut i = 0;
    samples.retain(|_| {
        i += 1;
        i % 2 == 1
    });
    if let Some(last) = last
        && samples.last() != Some(&last)
    {
        samples.push(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn samples_follow_the_counters_and_stay_few() {
        let settled = Arc::new(AtomicU64::new(0));
        let read = settled.clone();
        let recorder = Recorder::start(Duration::from_millis(10), move || Counters {
            settled: read.load(Ordering::Relaxed),
            ..Counters::default()
        });
        for _ in 0..30 {
            settled.fetch_add(10, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
        }
        let samples = recorder.finish();
        assert!(samples.len() >= 2, "{samples:?}");
        assert_eq!(samples[0].t, 0.0);
        assert_eq!(samples.last().unwrap().counters.settled, 300);
        assert!(samples.windows(2).all(|w| w[0].t <= w[1].t));
        let mut many: Vec<Sample> = (0..MOST_SAMPLES)
            .map(|i| Sample {
                t: i as f64,
                counters: Counters::default(),
            })
            .collect();
        thin(&mut many);
        assert_eq!(many.len(), MOST_SAMPLES / 2 + 1);
        assert_eq!(many.last().unwrap().t, (MOST_SAMPLES - 1) as f64);
    }
}
