//! The dispatcher: the async loop that keeps a window of requests in
//! flight, paces them against the server's quota, retries with backoff and
//! jitter, and hands each answer to [`settle`], which reads it entry by
//! entry.

mod settle;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use fhirlift_core::planner::Request;
use fhirlift_core::transport::{Outcome, Settled};

use crate::breaker;
use crate::client::{Answer, Http, is_ambiguous, redirect_refused};
use crate::config::SenderConfig;
use crate::outcomes::{
    describe_body, is_response_bundle, is_transient, outcome_text, stale_ledger_id,
};
use crate::quota::{Pacer, Quota};
use crate::resolve::{Resolution, Resolver};
use crate::stats::SenderStats;
use crate::window::Window;

/// What the sink sends the dispatcher.
pub(crate) enum Msg {
    Request(Request),
    /// Answer when everything before it is settled.
    Barrier(oneshot::Sender<()>),
}

/// A request on its way, with its history.
pub(crate) struct Job {
    pub(crate) request: Request,
    pub(crate) attempt: u32,
    pub(crate) not_before: Option<Instant>,
    /// Times the token was renewed for this request after a 401.
    pub(crate) reauths: u32,
    /// Times the request waited for the server's quota (not attempts).
    pub(crate) quota_waits: u32,
    /// What earlier answers to this request wrote before it was resent
    /// whole (a transaction whose other entries failed for a passing
    /// reason), by (record seq, operation): the resend finds them stored,
    /// but this run created or updated them.
    pub(crate) earlier: std::collections::HashMap<(u64, usize), Outcome>,
    /// The window's epoch when it was last sent ([`Window::shrink_for`]).
    pub(crate) sent_in: u64,
}

/// Token renewals one request may ask for before a 401 counts as refusal.
pub(crate) const MAX_REAUTHS: u32 = 3;

/// Quota windows one request may wait for (429s) before it is given up.
pub(crate) const MAX_QUOTA_WAITS: u32 = 60;

pub(crate) struct Dispatcher {
    /// Why the run cannot go on (refused credentials), once known.
    pub(crate) fatal: Arc<std::sync::Mutex<Option<String>>>,
    pub(crate) config: SenderConfig,
    pub(crate) http: Arc<Http>,
    /// Present under the resolve strategy.
    pub(crate) resolver: Option<Arc<Resolver>>,
    /// Identities written by requests in flight or waiting to retry, with
    /// how many such requests hold each.
    pub(crate) busy: std::collections::HashMap<u64, u32>,
    pub(crate) window: Window,
    pub(crate) settled: std::sync::mpsc::Sender<Settled>,
    pub(crate) stats: Arc<SenderStats>,
    pub(crate) rng: AtomicU64,
    /// The server's quotas, and the pause they impose.
    pub(crate) pacer: Pacer,
    /// Bundle entries in requests in flight (what the quota pays for next).
    pub(crate) entries_out: usize,
    /// The most entries a request has held: the size of the next one.
    pub(crate) largest: usize,
    pub(crate) breaker: breaker::Breaker,
    /// The breaker tripped: what is held is dropped, not rejected.
    pub(crate) tripped: bool,
    /// Stopped (Ctrl-C): nothing more is sent or retried; what is in flight
    /// is answered. What is dropped stays unsettled, below the marks.
    pub(crate) stopping: bool,
    pub(crate) stop: Arc<Stop>,
}

/// A stop request: a flag, and a wake-up for a dispatcher asleep until
/// its next retry.
#[derive(Default)]
pub(crate) struct Stop {
    pub(crate) requested: std::sync::atomic::AtomicBool,
    pub(crate) wake: tokio::sync::Notify,
}

impl Dispatcher {
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        type Joined = (Job, Answer, Option<Resolution>);
        let mut in_flight: JoinSet<Joined> = JoinSet::new();
        let mut waiting: VecDeque<Job> = VecDeque::new();
        // requests held back, in order, because an identity they write is
        // being written by another request
        let mut held: VecDeque<Request> = VecDeque::new();
        let mut barrier: Option<oneshot::Sender<()>> = None;
        let mut input_open = true;
        loop {
            if self.tripped {
                // the run stops: nothing more is sent, nothing is rejected
                in_flight.abort_all();
            }
            if !self.stopping
                && (self.stop.requested.load(Ordering::Relaxed)
                    || self
                        .config
                        .interrupted
                        .as_ref()
                        .is_some_and(|i| i.load(Ordering::Relaxed)))
            {
                self.stopping = true;
            }
            if self.tripped || self.stopping {
                waiting.clear();
                held.clear();
                self.busy.clear();
            }
            self.stats
                .window
                .store(self.window.get() as u64, Ordering::Relaxed);
            self.stats
                .in_flight
                .store(in_flight.len() as u64, Ordering::Relaxed);
            let now = Instant::now();
            // retries first, when their time has come and the quota allows
            while in_flight.len() < self.window.get() {
                let ready = waiting
                    .iter()
                    .position(|j| j.not_before.is_none_or(|t| t <= now));
                let Some(i) = ready else { break };
                if !self.admits(waiting[i].request.entries.len(), now) {
                    break;
                }
                if let Some(job) = waiting.remove(i) {
                    self.spawn(&mut in_flight, job);
                }
            }
            // then held requests whose identities are free again
            while in_flight.len() < self.window.get()
                && held.front().is_some_and(|r| !self.overlaps(r))
                && held
                    .front()
                    .is_some_and(|r| self.admits(r.entries.len(), now))
            {
                if let Some(request) = held.pop_front() {
                    self.start(&mut in_flight, request);
                }
            }
            let paused = !self.admits(self.largest, now);
            let paused_until = self.pacer.paused_until(now);
            let idle = in_flight.is_empty() && waiting.is_empty() && held.is_empty();
            if barrier.is_some() && idle {
                if let Some(done) = barrier.take() {
                    let _ = done.send(());
                }
                continue;
            }
            if !input_open && idle {
                return;
            }
            // requests waiting to be retried hold their place in the window,
            // by their size: a failing server slows intake instead of piling
            // up bodies, while the few entries of a batch resent alone (1%
            // of entries answered 409) do not keep a whole request's place
            // through their backoff (the run report showed the window's one
            // place held by them most of a run, nothing in flight)
            let waiting_entries: usize = waiting.iter().map(|j| j.request.entries.len()).sum();
            let waiting_places = waiting_entries / self.largest.max(1);
            let room = !paused
                && in_flight.len() + waiting_places + held.len() < self.window.get()
                && barrier.is_none()
                && input_open;
            // while paused, nothing is sent before the pause ends, however
            // long ago a waiting request's own time came
            let wake = paused_until.unwrap_or_else(|| {
                waiting
                    .iter()
                    .filter_map(|j| j.not_before)
                    .min()
                    .unwrap_or(now + Duration::from_secs(3600))
            });
            // look at the Ctrl-C flag at least four times a second
            let wake = if self.config.interrupted.is_some() {
                wake.min(now + Duration::from_millis(250))
            } else {
                wake
            };
            tokio::select! {
                Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Ok((job, answer, resolution)) = joined {
                        self.entries_out =
                            self.entries_out.saturating_sub(job.request.entries.len());
                        let identities = job.request.identities.clone();
                        let before = waiting.len();
                        self.handle(job, answer, resolution, &mut waiting).await;
                        if waiting.len() == before {
                            self.release(&identities);
                        }
                    }
                }
                msg = rx.recv(), if room => match msg {
                    Some(Msg::Request(_)) if self.tripped || self.stopping => {}
                    Some(Msg::Request(request)) => {
                        if held.is_empty() && !self.overlaps(&request) {
                            self.start(&mut in_flight, request);
                        } else {
                            held.push_back(request);
                        }
                    }
                    Some(Msg::Barrier(done)) => barrier = Some(done),
                    None => input_open = false,
                },
                _ = tokio::time::sleep_until(wake.into()), if !waiting.is_empty() || paused => {}
                _ = self.stop.wake.notified(), if !self.stopping => {}
            }
        }
    }

    /// Whether the quota left pays for a request of `entries` entries on
    /// top of those in flight (else the pacer pauses until it resets).
    pub(crate) fn admits(&mut self, entries: usize, now: Instant) -> bool {
        let was_paused = self.pacer.paused_until(now).is_some();
        let admitted = self.pacer.admits(entries, self.entries_out, now);
        if !admitted && !was_paused {
            // held back for the quota: a wait, counted as one
            self.stats.quota_waits.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// Whether another request in flight writes an identity this one writes.
    pub(crate) fn overlaps(&self, request: &Request) -> bool {
        !self.busy.is_empty() && request.identities.iter().any(|i| self.busy.contains_key(i))
    }

    /// Sends a new request, marking its identities busy until it is settled.
    pub(crate) fn start(
        &mut self,
        set: &mut JoinSet<(Job, Answer, Option<Resolution>)>,
        request: Request,
    ) {
        for &i in &request.identities {
            *self.busy.entry(i).or_default() += 1;
        }
        let job = Job {
            request,
            attempt: 0,
            not_before: None,
            reauths: 0,
            quota_waits: 0,
            earlier: Default::default(),
            sent_in: 0,
        };
        self.spawn(set, job);
    }

    pub(crate) fn release(&mut self, identities: &[u64]) {
        for i in identities {
            if let Some(n) = self.busy.get_mut(i) {
                *n -= 1;
                if *n == 0 {
                    self.busy.remove(i);
                }
            }
        }
    }

    /// Reads an answer's quotas (see [`Pacer::observe`]): a spent quota
    /// pauses sending until its window resets.
    pub(crate) fn pace(&mut self, quotas: &[Quota], entries: usize) -> Option<Duration> {
        self.pacer.observe(quotas, entries, Instant::now()).pause
    }

    pub(crate) fn spawn(
        &mut self,
        set: &mut JoinSet<(Job, Answer, Option<Resolution>)>,
        mut job: Job,
    ) {
        job.sent_in = self.window.epoch;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.entries_out += job.request.entries.len();
        self.largest = self.largest.max(job.request.entries.len());
        let http = self.http.clone();
        let resolver = self.resolver.clone();
        set.spawn(async move {
            let Some(resolver) = resolver.filter(|r| r.needed_for(&job.request)) else {
                let answer = http
                    .post_bundle(job.request.body.clone(), job.request.kind)
                    .await;
                return (job, answer, None);
            };
            match resolver
                .resolve(&http, &job.request, job.attempt == 0)
                .await
            {
                Err(answer) => (job, answer, None),
                Ok(mut resolution) => {
                    let answer = match resolution.write.as_mut() {
                        Some(write) => {
                            let body = std::mem::take(&mut write.body);
                            let answer = http.post_bundle(body, write.kind).await;
                            if is_ambiguous(&answer) {
                                // the write may have landed unseen
                                resolver.distrust(&job.request);
                            }
                            answer
                        }
                        None => Answer::nothing_sent(std::mem::take(&mut resolution.quotas)),
                    };
                    (job, answer, Some(resolution))
                }
            }
        });
    }

    pub(crate) fn jitter(&self, limit: Duration) -> Duration {
        let mut z = self.rng.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let unit = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
        limit.mul_f64(unit)
    }

    /// Exponential backoff with full jitter.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .config
            .base_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.config.max_backoff);
        self.config.base_backoff / 2 + self.jitter(cap)
    }

    pub(crate) fn retry(
        &mut self,
        mut job: Job,
        wait: Option<Duration>,
        why: String,
        waiting: &mut VecDeque<Job>,
    ) {
        job.attempt += 1;
        if job.attempt >= self.config.max_attempts {
            let n = job.request.entries.len();
            self.reject_entries(
                &job,
                &(0..n).collect::<Vec<_>>(),
                None,
                &format!("gave up after {} attempts: {why}", job.attempt),
                None,
            );
            return;
        }
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(stream = %job.request.stream, attempt = job.attempt, reason = %why, "retrying a request");
        let delay = wait.unwrap_or_else(|| self.backoff(job.attempt));
        job.not_before = Some(Instant::now() + delay);
        waiting.push_back(job);
    }

    /// Sends a request refused for the server's quota (429) again once the
    /// quota's window has reset. A quota wait is not a failed attempt: the
    /// server will take the request, only later. It is bounded all the
    /// same, so that a server that never lets a request through ends it.
    pub(crate) fn wait_for_quota(
        &mut self,
        mut job: Job,
        retry_after: Option<Duration>,
        waiting: &mut VecDeque<Job>,
    ) {
        job.quota_waits += 1;
        if job.quota_waits > MAX_QUOTA_WAITS {
            let n = job.request.entries.len();
            let why = format!(
                "the server refused it for its quota (429) {MAX_QUOTA_WAITS} times, waiting for the quota window each time; raise the project's quota or lower --concurrency"
            );
            self.reject_entries(&job, &(0..n).collect::<Vec<_>>(), Some(429), &why, None);
            return;
        }
        self.stats.quota_waits.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let wait = self
            .pacer
            .wait_after_429(retry_after, now)
            // no answer said how long: back off as after a failure
            .unwrap_or_else(|| self.backoff(job.quota_waits.min(8)));
        tracing::debug!(stream = %job.request.stream, seconds = wait.as_secs(), "waiting for the server's quota");
        // a little jitter, so that the requests waiting do not all go at once
        job.not_before = Some(now + wait + self.jitter(Duration::from_millis(250)));
        waiting.push_back(job);
    }

    pub(crate) async fn handle(
        &mut self,
        job: Job,
        answer: Answer,
        resolution: Option<Resolution>,
        waiting: &mut VecDeque<Job>,
    ) {
        match answer {
            Answer::Transport(why) => {
                self.window.shrink_for(job.sent_in);
                if let Some(stop) = self.breaker.failed(&why) {
                    tracing::error!(reason = %why, "the server does not answer: the run stops");
                    self.tripped = true;
                    self.fatal
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(stop);
                    return;
                }
                self.retry(job, None, why, waiting);
            }
            Answer::AuthRefused(why) => {
                let n = job.request.entries.len();
                self.reject_entries(&job, &(0..n).collect::<Vec<_>>(), None, &why, None);
                let mut fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
                fatal.get_or_insert(why);
            }
            Answer::Http {
                status,
                used_auth,
                retry_after,
                quotas,
                sent_at_ms,
                body,
                ..
            } => {
                self.breaker.answered();
                self.stats.note_statuses([status]);
                let pause = self.pace(&quotas, job.request.entries.len());
                if status == 401 && job.reauths < MAX_REAUTHS {
                    self.http.auth.invalidate(used_auth.as_ref()).await;
                    let mut job = job;
                    job.reauths += 1;
                    self.retry(
                        job,
                        Some(Duration::ZERO),
                        "401: renewing the token".into(),
                        waiting,
                    );
                } else if status == 401 || status == 403 {
                    let why = format!(
                        "HTTP {status}: the server refused the credentials ({}); check the token or the client's access",
                        outcome_text(&body)
                    );
                    self.stop_run(&job, status, why, Some(&body));
                } else if (300..400).contains(&status) {
                    self.stop_run(&job, status, redirect_refused(status, &body), None);
                } else if is_transient(status)
                    || (status == 412 && resolution.is_some())
                    || (resolution.as_ref().is_some_and(|r| r.from_ledger)
                        && stale_ledger_id(status))
                {
                    self.window.shrink_for(job.sent_in);
                    if status == 429 {
                        self.wait_for_quota(job, retry_after, waiting);
                    } else {
                        self.retry(
                            job,
                            retry_after.or(pause),
                            format!("HTTP {status}"),
                            waiting,
                        );
                    }
                } else if (200..300).contains(&status)
                    && resolution.as_ref().is_none_or(|r| r.write.is_some())
                    && !is_response_bundle(&body)
                {
                    // an answer that is not what a bundle is answered with
                    // (a proxy's page, an empty body): nothing can be taken
                    // as written; sent again (idempotent, or searched again)
                    self.window.shrink_for(job.sent_in);
                    let why = format!(
                        "HTTP {status} with {}, not a batch-response or transaction-response Bundle",
                        describe_body(&body)
                    );
                    self.retry(job, retry_after.or(pause), why, waiting);
                } else if (200..300).contains(&status) {
                    match resolution {
                        Some(r) => self.answered_resolved(job, r, &body, sent_at_ms, waiting),
                        None => self.answered(job, &body, sent_at_ms, waiting),
                    }
                } else {
                    let reason = format!("HTTP {status}: {}", outcome_text(&body));
                    let which: Vec<usize> = match &resolution {
                        // what was settled before sending stays settled
                        Some(r) => {
                            self.settle_resolved_before(&job, r);
                            r.write
                                .as_ref()
                                .map(|w| w.sent.iter().map(|s| s.entry).collect())
                                .unwrap_or_default()
                        }
                        None => (0..job.request.entries.len()).collect(),
                    };
                    self.reject_entries(&job, &which, Some(status), &reason, Some(&body));
                }
            }
        }
    }
}
