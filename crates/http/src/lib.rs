//! The sender: writes planned requests to a FHIR server and reports what
//! became of every operation.
//!
//! One HTTP client (keep-alive, gzip) runs a window of requests in flight
//! that grows while answers come back clean and halves on 429, 409, 5xx
//! and transport errors (AIMD). Failed requests are retried with
//! exponential backoff and full jitter, honouring `Retry-After` and pausing
//! on Medplum's `RateLimit` header before the quota runs out. A batch
//! answer is read entry by entry: an entry that failed alone is resent
//! alone when the failure is transient (429, 409, 5xx) and rejected
//! otherwise; a transaction succeeds or fails whole. Nothing is reported
//! written until the server said so.
//!
//! The sender runs on a tokio runtime; [`SenderSink`] is its face to the
//! (synchronous) pipeline.

mod auth;
mod breaker;
mod clock;
mod probe;
mod quota;
mod resolve;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

pub use auth::Auth;
use auth::AuthState;
pub use probe::fetch_capability;
use quota::{Pacer, Quota, parse_ratelimit};

use fhirlift_core::planner::{Request, RequestKind};
use fhirlift_core::profile::WriteStrategy;
use fhirlift_core::transport::{Outcome, RequestSink, Settled, SinkError, is_loopback_host};
use resolve::{Resolution, Resolver};

/// How to reach the server.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// The FHIR base URL, e.g. `https://api.medplum.com/fhir/R4`.
    pub base_url: String,
    pub auth: Auth,
    /// The most requests in flight (the window adapts below it).
    pub max_in_flight: usize,
    /// Attempts per request before its entries are rejected.
    pub max_attempts: u32,
    /// Time allowed for one request.
    pub timeout: Duration,
    /// The first backoff; it doubles per attempt up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Conditional writes as planned, or resolve identifiers first.
    pub strategy: WriteStrategy,
    /// Under the conditional strategy: resolve conditional references
    /// before sending, for servers that resolve them only in transactions.
    pub resolve_references: bool,
    /// Send batches as async jobs (`Prefer: respond-async`) and poll them.
    pub asynchronous: bool,
    /// The longest wait for one async job.
    pub async_timeout: Duration,
    /// How long the server may go without answering any request before
    /// the run stops ([`breaker`]).
    pub give_up_after: Duration,
    /// Set by Ctrl-C (the run's own flag): the dispatcher stops sending and
    /// retrying within a quarter of a second, even while the pipeline is
    /// blocked handing it a request.
    pub interrupted: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl SenderConfig {
    pub fn new(base_url: &str) -> SenderConfig {
        SenderConfig {
            base_url: base_url.trim_end_matches('/').to_owned(),
            auth: Auth::None,
            max_in_flight: 8,
            max_attempts: 12,
            timeout: Duration::from_secs(120),
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            strategy: WriteStrategy::Conditional,
            resolve_references: false,
            asynchronous: false,
            async_timeout: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(60),
            interrupted: None,
        }
    }
}

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

enum Msg {
    Request(Request),
    /// Answer when everything before it is settled.
    Barrier(oneshot::Sender<()>),
}

/// A request on its way, with its history.
struct Job {
    request: Request,
    attempt: u32,
    not_before: Option<Instant>,
    /// Times the token was renewed for this request after a 401.
    reauths: u32,
    /// Times the request waited for the server's quota (not attempts).
    quota_waits: u32,
    /// What earlier answers to this request wrote before it was resent
    /// whole (a transaction whose other entries failed for a passing
    /// reason), by (record seq, operation): the resend finds them stored,
    /// but this run created or updated them.
    earlier: std::collections::HashMap<(u64, usize), Outcome>,
}

/// What one HTTP attempt gave.
enum Answer {
    Transport(String),
    /// The credentials were refused: the run cannot go on.
    AuthRefused(String),
    Http {
        status: u16,
        /// The Authorization header sent, to renew only a stale token.
        used_auth: Option<reqwest::header::HeaderValue>,
        retry_after: Option<Duration>,
        /// From `RateLimit`.
        quotas: Vec<Quota>,
        /// The server's clock (`Date`) minus the request's duration, in ms.
        sent_at_ms: Option<i64>,
        /// `Content-Location` (an async job's status URL).
        content_location: Option<String>,
        body: Value,
    },
}

impl Answer {
    /// A success with nothing sent (the resolver skipped every write).
    fn nothing_sent(quotas: Vec<Quota>) -> Answer {
        Answer::Http {
            status: 200,
            used_auth: None,
            retry_after: None,
            quotas,
            sent_at_ms: None,
            content_location: None,
            body: Value::Null,
        }
    }
}

/// The pipeline's side of the sender: submit blocks while the window is full.
pub struct SenderSink {
    /// Ctrl-C, told to the dispatcher out of band (its request channel may
    /// be full of work it is waiting to retry).
    stop: Arc<Stop>,
    /// The dispatcher's HTTP side, for the questions asked before a run.
    http: Arc<Http>,
    fatal: Arc<std::sync::Mutex<Option<String>>>,
    tx: Option<mpsc::Sender<Msg>>,
    settled: std::sync::mpsc::Receiver<Settled>,
    task: Option<tokio::task::JoinHandle<()>>,
    runtime: tokio::runtime::Handle,
    pub stats: Arc<SenderStats>,
}

/// Every HTTP client of fhirlift: its user agent, and no redirects
/// followed. A redirect would send a request's body (patient data) to
/// wherever the answer points; a 3xx stops the run instead
/// ([`redirect_refused`]).
pub(crate) fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("fhirlift/", env!("CARGO_PKG_VERSION")))
}

/// The host of a plain `http://` URL that is not this machine (loopback):
/// where credentials and patient data would cross a network unencrypted.
/// `None` for `https://`, for loopback, and for what does not parse (the
/// client refuses that anyway).
pub fn insecure_remote_host(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    if url.scheme() != "http" {
        return None;
    }
    let host = url.host_str()?;
    (!is_loopback_host(host)).then(|| host.to_owned())
}

/// Why a run stops at a redirect.
fn redirect_refused(status: u16, body: &Value) -> String {
    let mut why = format!(
        "HTTP {status}: the server answered with a redirect; fhirlift does not follow \
         redirects (the request's patient data would go where it was not sent): give the \
         server's final FHIR base URL as --server"
    );
    if !body.is_null() {
        why.push_str(&format!(" ({})", outcome_text(body)));
    }
    why
}

impl SenderSink {
    /// Starts the sender on `runtime`.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        config: SenderConfig,
    ) -> Result<SenderSink, SinkError> {
        let client = client_builder()
            .gzip(true)
            .timeout(config.timeout)
            // an address that never answers a connection is found out in
            // seconds, not after the whole request's timeout
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(config.max_in_flight.max(1))
            .build()
            .map_err(|e| SinkError(format!("cannot build the HTTP client: {e}")))?;
        let give_up_after = config.give_up_after;
        let stop = Arc::new(Stop::default());
        let (tx, rx) = mpsc::channel(config.max_in_flight.max(1));
        let (settled_tx, settled) = std::sync::mpsc::channel();
        let stats = Arc::new(SenderStats::default());
        let fatal = Arc::new(std::sync::Mutex::new(None));
        let http = Arc::new(Http {
            stats: stats.clone(),
            auth: AuthState::new(config.auth.clone(), &config.base_url),
            client,
            base: config.base_url.clone(),
            asynchronous: config.asynchronous,
            async_timeout: config.async_timeout,
        });
        let dispatcher = Dispatcher {
            fatal: fatal.clone(),
            http: http.clone(),
            resolver: match (config.strategy, config.resolve_references) {
                (WriteStrategy::Resolve, _) => Some(Arc::new(Resolver::default())),
                (WriteStrategy::Conditional, true) => Some(Arc::new(Resolver::references_only())),
                (WriteStrategy::Conditional, false) => None,
            },
            busy: std::collections::HashMap::new(),
            window: Window::new(config.max_in_flight),
            config,
            settled: settled_tx,
            stats: stats.clone(),
            rng: std::sync::atomic::AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7),
            ),
            pacer: Pacer::default(),
            entries_out: 0,
            largest: 1,
            breaker: breaker::Breaker::new(give_up_after),
            tripped: false,
            stopping: false,
            stop: stop.clone(),
        };
        let task = runtime.spawn(dispatcher.run(rx));
        Ok(SenderSink {
            stop,
            http,
            fatal,
            tx: Some(tx),
            settled,
            task: Some(task),
            runtime: runtime.clone(),
            stats,
        })
    }

    /// Waits until everything submitted is settled; returns what is left.
    /// Who the credentials write as, for the ledger's target (see
    /// [`probe::principal`]); asked before the run, with the run's token.
    pub fn principal(&self) -> Result<Option<String>, String> {
        self.runtime.block_on(probe::principal(&self.http))
    }

    /// Of a sample of identities the ledger holds, those the server no
    /// longer has, per resource type as (missing, sampled): one search
    /// per type, counted with the run's searches.
    pub fn missing_from_server(
        &self,
        sample: &[fhirlift_core::transport::SampledIdentity],
    ) -> Result<std::collections::BTreeMap<String, (usize, usize)>, String> {
        self.runtime
            .block_on(probe::missing_from_server(&self.http, sample))
    }

    pub fn finish(&mut self) -> Vec<Settled> {
        drop(self.tx.take());
        if let Some(task) = self.task.take() {
            let _ = self.runtime.block_on(task);
        }
        self.settled.try_iter().collect()
    }
}

impl SenderSink {
    /// Stops the run once the credentials were refused.
    fn check_fatal(&self) -> Result<(), SinkError> {
        match self
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(why) => Err(SinkError(format!("the run stopped: {why}"))),
            None => Ok(()),
        }
    }
}

impl RequestSink for SenderSink {
    fn submit(&mut self, request: Request) -> Result<(), SinkError> {
        self.check_fatal()?;
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| SinkError("the sender has stopped".into()))?;
        tx.blocking_send(Msg::Request(request))
            .map_err(|_| SinkError("the sender stopped unexpectedly".into()))
    }

    fn settled(&mut self) -> Vec<Settled> {
        self.settled.try_iter().collect()
    }

    fn traffic(&self) -> Option<fhirlift_core::transport::Traffic> {
        Some(fhirlift_core::transport::Traffic {
            quota_waits: self.stats.quota_waits.load(Ordering::Relaxed),
            writes: self.stats.writes.load(Ordering::Relaxed),
            searches: self.stats.searches.load(Ordering::Relaxed),
        })
    }

    fn activity(&self) -> Option<(u64, u64)> {
        Some((
            self.stats.in_flight.load(Ordering::Relaxed),
            self.stats.retries.load(Ordering::Relaxed),
        ))
    }

    fn stop(&mut self) {
        self.stop.requested.store(true, Ordering::Relaxed);
        self.stop.wake.notify_one();
    }

    fn end_phase(&mut self, _phase: usize) -> Result<(), SinkError> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| SinkError("the sender has stopped".into()))?;
        let (done, wait) = oneshot::channel();
        tx.blocking_send(Msg::Barrier(done))
            .map_err(|_| SinkError("the sender stopped unexpectedly".into()))?;
        wait.blocking_recv()
            .map_err(|_| SinkError("the sender stopped before the phase was answered".into()))?;
        self.check_fatal()
    }
}

/// The adaptive window: additive increase, multiplicative decrease. It
/// opens at up to 8 requests: a first load of a few bundles per phase
/// never grew past 2 or 3 from a start at 2, and on a real Medplum a start
/// at 8 loaded 500 patients (3,297 resources) in 5.4-6.1 s instead of
/// 6.2-6.6 s. A server that pushes back halves it at once.
struct Window {
    size: f64,
    max: f64,
}

impl Window {
    fn new(max: usize) -> Window {
        let max = max.max(1) as f64;
        Window {
            size: max.min(8.0),
            max,
        }
    }
    fn get(&self) -> usize {
        self.size.floor().max(1.0) as usize
    }
    fn grow(&mut self) {
        self.size = (self.size + 1.0 / self.size).min(self.max);
    }
    fn shrink(&mut self) {
        self.size = (self.size / 2.0).max(1.0);
    }
}

/// Token renewals one request may ask for before a 401 counts as refusal.
const MAX_REAUTHS: u32 = 3;

/// Quota windows one request may wait for (429s) before it is given up.
const MAX_QUOTA_WAITS: u32 = 60;

fn is_transient(status: u16) -> bool {
    matches!(status, 408 | 409 | 425 | 429 | 500 | 502 | 503 | 504)
}

/// A refusal of a write by a ledger-given id that may only mean the ledger
/// is stale (the resource was deleted, merged or moved on since): sent
/// again once, searching first (a retry never uses the ledger's ids). A
/// record the server refuses for itself fails again, then is rejected.
fn stale_ledger_id(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 401 | 403)
}

/// Whether an entry of a resolved write that failed with `status` is sent
/// again (searched first) rather than rejected: a passing failure, a 412
/// on a version read by a search, or a refusal of a ledger-given id.
fn entry_resent(status: u16, from_ledger: bool) -> bool {
    is_transient(status) || status == 412 || (from_ledger && stale_ledger_id(status))
}

/// The entries of an answer to send again, and why.
#[derive(Debug, Default)]
struct Resend {
    entries: Vec<usize>,
    /// The server pushed back (409 or 429): the window shrinks.
    throttled: bool,
    /// A failure among them other than the quota's 429.
    not_quota: bool,
    /// Operations that earlier answers wrote: see [`Job::earlier`].
    earlier: Vec<((u64, usize), Outcome)>,
}

impl Resend {
    /// Sends entry `entry` again; `statuses` are its answer's statuses.
    fn push(&mut self, entry: usize, statuses: impl IntoIterator<Item = u16>) {
        self.entries.push(entry);
        for s in statuses {
            self.throttled |= s == 429 || s == 409;
            self.not_quota |= s != 429 && !(200..300).contains(&s);
        }
    }

    /// Every entry failed only for the server's quota: a wait, not a failure.
    fn quota_only(&self) -> bool {
        !self.entries.is_empty() && !self.not_quota
    }
}

/// Of two answers about one write of this run, what it did: created over
/// updated over unchanged.
fn strongest(a: Outcome, b: Outcome) -> Outcome {
    let rank = |o: Outcome| match o {
        Outcome::Created => 3,
        Outcome::Updated => 2,
        Outcome::Unchanged => 1,
        Outcome::Rejected => 0,
    };
    if rank(a) >= rank(b) { a } else { b }
}

/// What becomes of a transaction, by its entries' statuses.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Every entry written.
    Written,
    /// Sent again whole: every failure passes (`resendable`: 409, 429,
    /// 5xx...), and what was written may be written again (`idempotent`:
    /// keyed on identifiers, so the resend finds it).
    Resend,
    /// Some written, the rest failed for good (or a bare create was
    /// written): the record is partially written.
    Partial,
    /// Nothing written, for a reason that does not pass.
    Refused,
}

fn transaction_verdict(
    statuses: &[u16],
    idempotent: bool,
    resendable: impl Fn(u16) -> bool,
) -> Verdict {
    let ok = |s: &u16| (200..300).contains(s);
    let written = statuses.iter().filter(|s| ok(s)).count();
    let failures_pass = statuses.iter().all(|s| ok(s) || resendable(*s));
    if written == statuses.len() {
        Verdict::Written
    } else if failures_pass && (written == 0 || idempotent) {
        Verdict::Resend
    } else if written > 0 {
        Verdict::Partial
    } else {
        Verdict::Refused
    }
}

struct Dispatcher {
    /// Why the run cannot go on (refused credentials), once known.
    fatal: Arc<std::sync::Mutex<Option<String>>>,
    config: SenderConfig,
    http: Arc<Http>,
    /// Present under the resolve strategy.
    resolver: Option<Arc<Resolver>>,
    /// Identities written by requests in flight or waiting to retry, with
    /// how many such requests hold each.
    busy: std::collections::HashMap<u64, u32>,
    window: Window,
    settled: std::sync::mpsc::Sender<Settled>,
    stats: Arc<SenderStats>,
    rng: AtomicU64,
    /// The server's quotas, and the pause they impose.
    pacer: Pacer,
    /// Bundle entries in requests in flight (what the quota pays for next).
    entries_out: usize,
    /// The most entries a request has held: the size of the next one.
    largest: usize,
    breaker: breaker::Breaker,
    /// The breaker tripped: what is held is dropped, not rejected.
    tripped: bool,
    /// Stopped (Ctrl-C): nothing more is sent or retried; what is in flight
    /// is answered. What is dropped stays unsettled, below the marks.
    stopping: bool,
    stop: Arc<Stop>,
}

/// A stop request: a flag, and a wake-up for a dispatcher asleep until
/// its next retry.
#[derive(Default)]
struct Stop {
    requested: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl Dispatcher {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
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
            // requests waiting to be retried hold their place in the window:
            // a failing server slows intake instead of piling up bodies
            let room = !paused
                && in_flight.len() + waiting.len() + held.len() < self.window.get()
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
    fn admits(&mut self, entries: usize, now: Instant) -> bool {
        let was_paused = self.pacer.paused_until(now).is_some();
        let admitted = self.pacer.admits(entries, self.entries_out, now);
        if !admitted && !was_paused {
            // held back for the quota: a wait, counted as one
            self.stats.quota_waits.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// Whether another request in flight writes an identity this one writes.
    fn overlaps(&self, request: &Request) -> bool {
        !self.busy.is_empty() && request.identities.iter().any(|i| self.busy.contains_key(i))
    }

    /// Sends a new request, marking its identities busy until it is settled.
    fn start(&mut self, set: &mut JoinSet<(Job, Answer, Option<Resolution>)>, request: Request) {
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
        };
        self.spawn(set, job);
    }

    fn release(&mut self, identities: &[u64]) {
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
    fn pace(&mut self, quotas: &[Quota], entries: usize) -> Option<Duration> {
        self.pacer.observe(quotas, entries, Instant::now()).pause
    }

    fn spawn(&mut self, set: &mut JoinSet<(Job, Answer, Option<Resolution>)>, job: Job) {
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

    fn jitter(&self, limit: Duration) -> Duration {
        let mut z = self.rng.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let unit = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
        limit.mul_f64(unit)
    }

    /// Exponential backoff with full jitter.
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .config
            .base_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.config.max_backoff);
        self.config.base_backoff / 2 + self.jitter(cap)
    }

    fn retry(
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
    fn wait_for_quota(
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

    async fn handle(
        &mut self,
        job: Job,
        answer: Answer,
        resolution: Option<Resolution>,
        waiting: &mut VecDeque<Job>,
    ) {
        match answer {
            Answer::Transport(why) => {
                self.window.shrink();
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
                    self.window.shrink();
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
                    self.window.shrink();
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

    /// A 2xx answer: settle entry by entry, resend the transient failures.
    fn answered(
        &mut self,
        job: Job,
        body: &Value,
        sent_at_ms: Option<i64>,
        waiting: &mut VecDeque<Job>,
    ) {
        let request = &job.request;
        let responses: &[Value] = body["entry"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut resend = Resend::default();
        if request.kind == RequestKind::Transaction {
            self.settle_transaction(&job, 0, responses, body, sent_at_ms, &mut resend);
            self.resend_or_grow(&job, &resend, waiting);
            return;
        }
        if responses.len() != request.entries.len() {
            let n = request.entries.len();
            let reason = format!(
                "the server answered {} entries for a bundle of {n}; nothing can be assumed written",
                responses.len()
            );
            self.reject_entries(&job, &(0..n).collect::<Vec<_>>(), None, &reason, Some(body));
            return;
        }
        for (i, response) in responses.iter().enumerate() {
            let status = entry_status(response);
            if (200..300).contains(&status) {
                self.settle_entry(&job, i, response, sent_at_ms, &mut resend);
            } else if is_transient(status) {
                resend.push(i, [status]);
            } else {
                let reason = format!(
                    "{status}: {}",
                    outcome_text(&response["response"]["outcome"])
                );
                self.reject_entries(
                    &job,
                    &[i],
                    Some(status),
                    &reason,
                    Some(&response["response"]["outcome"]),
                );
            }
        }
        self.resend_or_grow(&job, &resend, waiting);
    }

    /// After an answer: grow the window when every entry settled, or resend
    /// the entries that failed for a passing reason (shrinking the window
    /// when the server pushed back).
    fn resend_or_grow(&mut self, job: &Job, resend: &Resend, waiting: &mut VecDeque<Job>) {
        if resend.entries.is_empty() {
            self.window.grow();
            return;
        }
        if resend.throttled {
            self.window.shrink();
        }
        let retry = Job {
            request: job.request.subset(&resend.entries),
            attempt: job.attempt,
            not_before: None,
            reauths: job.reauths,
            quota_waits: job.quota_waits,
            earlier: {
                // a resend that finds what an earlier answer wrote says
                // unchanged: the earliest, strongest outcome stands
                let mut earlier = job.earlier.clone();
                for &(at, outcome) in &resend.earlier {
                    earlier
                        .entry(at)
                        .and_modify(|o| *o = strongest(*o, outcome))
                        .or_insert(outcome);
                }
                earlier
            },
        };
        if resend.quota_only() {
            // the server ran out of quota part-way through the bundle
            self.wait_for_quota(retry, None, waiting);
        } else {
            let why = format!(
                "{} entries failed for a passing reason",
                resend.entries.len()
            );
            self.retry(retry, None, why, waiting);
        }
    }

    /// Settles what the resolver decided without a write: stored
    /// unchanged, or refused before sending.
    fn settle_resolved_before(&self, job: &Job, resolution: &Resolution) {
        let request = &job.request;
        for &(entry, op) in &resolution.unchanged {
            let group = &request.groups[request.entries[entry].group];
            self.settle(
                job,
                entry,
                op,
                &group.resource_types[op],
                Outcome::Unchanged,
                None,
            );
        }
        for (entry, reason) in &resolution.rejected {
            self.reject_entries(job, &[*entry], None, reason, None);
        }
    }

    /// A 2xx answer to a resolved write: settle by what was sent, resend
    /// the entries that failed for a passing reason (they resolve again).
    fn answered_resolved(
        &mut self,
        job: Job,
        resolution: Resolution,
        body: &Value,
        sent_at_ms: Option<i64>,
        waiting: &mut VecDeque<Job>,
    ) {
        self.settle_resolved_before(&job, &resolution);
        let Some(write) = &resolution.write else {
            self.window.grow();
            return;
        };
        let responses: Vec<&Value> = match write.kind {
            // a lone transaction's answer is the transaction-response
            RequestKind::Transaction => vec![body],
            _ => body["entry"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default(),
        };
        if responses.len() != write.sent.len() {
            let reason = format!(
                "the server answered {} entries for a bundle of {}; nothing can be assumed written",
                responses.len(),
                write.sent.len()
            );
            let which: Vec<usize> = write.sent.iter().map(|s| s.entry).collect();
            self.reject_entries(&job, &which, None, &reason, Some(body));
            return;
        }
        let mut resend = Resend::default();
        for (sent, response) in write.sent.iter().zip(responses) {
            let inner: Vec<&Value> = if write.kind == RequestKind::Transaction {
                response["entry"]
                    .as_array()
                    .map(|a| a.iter().collect())
                    .unwrap_or_default()
            } else if write.kind == RequestKind::BatchOfTransactions {
                let status = entry_status(response);
                if !(200..300).contains(&status) {
                    if entry_resent(status, sent.from_ledger) {
                        resend.push(sent.entry, [status]);
                    } else {
                        let outcome = &response["response"]["outcome"];
                        let reason = format!("{status}: {}", outcome_text(outcome));
                        self.reject_entries(
                            &job,
                            &[sent.entry],
                            Some(status),
                            &reason,
                            Some(outcome),
                        );
                    }
                    continue;
                }
                response["resource"]["entry"]
                    .as_array()
                    .map(|a| a.iter().collect())
                    .unwrap_or_default()
            } else {
                vec![response]
            };
            if inner.len() != sent.ops.len() {
                let reason = format!(
                    "the server answered {} entries for a transaction of {}; it may be partially written",
                    inner.len(),
                    sent.ops.len()
                );
                self.reject_entries(&job, &[sent.entry], None, &reason, Some(response));
                continue;
            }
            if write.kind == RequestKind::Batch {
                // a plain entry: written, or failed alone
                let status = entry_status(inner[0]);
                if (200..300).contains(&status) {
                    self.settle_written(&job, sent, 0, inner[0], sent_at_ms);
                } else if entry_resent(status, sent.from_ledger) {
                    resend.push(sent.entry, [status]);
                } else {
                    let outcome = &inner[0]["response"]["outcome"];
                    let reason = format!("{status}: {}", outcome_text(outcome));
                    self.reject_entries(&job, &[sent.entry], Some(status), &reason, Some(outcome));
                }
                continue;
            }
            let from_ledger = sent.from_ledger;
            let resendable = |s: u16| entry_resent(s, from_ledger);
            self.settle_verdict(&job, sent, &inner, sent_at_ms, resendable, &mut resend);
        }
        self.resend_or_grow(&job, &resend, waiting);
    }

    /// Tells the resolver the id the server gave a written operation.
    fn remember_id(&self, sent: &resolve::SentEntry, k: usize, response: &Value) {
        if let (Some(resolver), Some(identity)) = (&self.resolver, &sent.identities[k]) {
            match resolve::answered_id(response) {
                Some(id) => resolver.created(identity, &id),
                // an id the answer does not give cannot be remembered
                None => resolver.distrust_system(identity),
            }
        }
    }

    /// Settles one written operation of a resolved write and remembers its id.
    fn settle_written(
        &self,
        job: &Job,
        sent: &resolve::SentEntry,
        k: usize,
        response: &Value,
        sent_at_ms: Option<i64>,
    ) {
        let request = &job.request;
        let op = sent.ops[k];
        let group = &request.groups[request.entries[sent.entry].group];
        let outcome = entry_outcome(Some(response), sent_at_ms).unwrap_or(Outcome::Updated);
        self.remember_id(sent, k, response);
        self.settle(
            job,
            sent.entry,
            op,
            &group.resource_types[op],
            outcome,
            Some(response),
        );
    }

    /// A transaction answered with mixed statuses: it was not atomic. What
    /// the server wrote is settled as written; the rest is rejected with
    /// the group named partially written, never assumed.
    fn partially_written(
        &self,
        job: &Job,
        sent: &resolve::SentEntry,
        inner: &[&Value],
        sent_at_ms: Option<i64>,
    ) {
        let request = &job.request;
        let entry = &request.entries[sent.entry];
        let group = &request.groups[entry.group];
        let written = inner
            .iter()
            .filter(|r| (200..300).contains(&entry_status(r)))
            .count();
        let text = String::from_utf8_lossy(&request.body[entry.range.clone()]).into_owned();
        let mut first = true;
        for (k, r) in inner.iter().enumerate() {
            let status = entry_status(r);
            if (200..300).contains(&status) {
                self.settle_written(job, sent, k, r, sent_at_ms);
                continue;
            }
            let op = sent.ops[k];
            let outcome = &r["response"]["outcome"];
            let reason = format!(
                "the transaction was not atomic: {written} of its {} resources were written and its {} failed ({status}: {}); the record is partially written, run again to complete it (on Medplum, enable the project's transaction-bundles feature for atomic transactions)",
                inner.len(),
                group.resource_types[op],
                outcome_text(outcome)
            );
            self.reject_op(
                job,
                group,
                op,
                first,
                Some(status),
                reason,
                &text,
                Some(outcome),
            );
            first = false;
        }
    }

    fn settle_entry(
        &self,
        job: &Job,
        index: usize,
        response: &Value,
        sent_at_ms: Option<i64>,
        resend: &mut Resend,
    ) {
        let request = &job.request;
        let entry = &request.entries[index];
        let types = &request.groups[entry.group].resource_types;
        if request.kind == RequestKind::BatchOfTransactions {
            let inner = response["resource"]["entry"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            self.settle_transaction(job, index, inner, &response["resource"], sent_at_ms, resend);
        } else {
            let outcome = entry_outcome(Some(response), sent_at_ms).unwrap_or(Outcome::Updated);
            self.settle(
                job,
                index,
                entry.first_op,
                &types[entry.first_op],
                outcome,
                Some(response),
            );
        }
    }

    /// Settles a transaction's answer (see [`transaction_verdict`]): all
    /// written, sent again whole, partially written (a server that ran it
    /// as a batch), or refused.
    fn settle_transaction(
        &self,
        job: &Job,
        index: usize,
        inner: &[Value],
        whole: &Value,
        sent_at_ms: Option<i64>,
        resend: &mut Resend,
    ) {
        let entry = &job.request.entries[index];
        let sent = resolve::SentEntry {
            entry: index,
            ops: (entry.first_op..entry.first_op + entry.operations).collect(),
            identities: vec![None; entry.operations],
            from_ledger: false,
        };
        let inner: Vec<&Value> = inner.iter().collect();
        if inner.len() != entry.operations {
            let reason = format!(
                "the server answered {} entries for a transaction of {}; it may be partially written",
                inner.len(),
                entry.operations
            );
            self.reject_entries(job, &[index], None, &reason, Some(whole));
            return;
        }
        self.settle_verdict(job, &sent, &inner, sent_at_ms, is_transient, resend);
    }

    /// Acts on a transaction's answer, `inner` entry for entry, whichever
    /// path sent it; `resendable` says which failures pass.
    fn settle_verdict(
        &self,
        job: &Job,
        sent: &resolve::SentEntry,
        inner: &[&Value],
        sent_at_ms: Option<i64>,
        resendable: impl Fn(u16) -> bool,
        resend: &mut Resend,
    ) {
        let statuses: Vec<u16> = inner.iter().map(|r| entry_status(r)).collect();
        let group = &job.request.groups[job.request.entries[sent.entry].group];
        // what was written may be written again only when every write of
        // it is keyed on an identifier (a bare POST would be repeated)
        let idempotent = sent
            .ops
            .iter()
            .all(|&op| group.identities.get(op).is_some_and(Option::is_some));
        match transaction_verdict(&statuses, idempotent, resendable) {
            Verdict::Written => {
                for (k, r) in inner.iter().enumerate() {
                    self.settle_written(job, sent, k, r, sent_at_ms);
                }
            }
            Verdict::Resend => {
                // what landed is remembered, so the resend (which finds it
                // stored) still counts it created or updated
                for (k, r) in inner.iter().enumerate() {
                    if let Some(outcome) = entry_outcome(Some(r), sent_at_ms) {
                        resend.earlier.push(((group.seq, sent.ops[k]), outcome));
                        // and the resolver knows it is stored now: the
                        // resend searches it instead of taking the
                        // empty-system shortcut and creating it again
                        self.remember_id(sent, k, r);
                    }
                }
                resend.push(sent.entry, statuses);
            }
            Verdict::Partial => self.partially_written(job, sent, inner, sent_at_ms),
            Verdict::Refused => {
                let outcome = &inner[0]["response"]["outcome"];
                let reason = format!("{}: {}", statuses[0], outcome_text(outcome));
                self.reject_entries(
                    job,
                    &[sent.entry],
                    Some(statuses[0]),
                    &reason,
                    Some(outcome),
                );
            }
        }
    }

    fn settle(
        &self,
        job: &Job,
        entry: usize,
        op: usize,
        resource_type: &str,
        outcome: Outcome,
        response: Option<&Value>,
    ) {
        let request = &job.request;
        let group = &request.groups[request.entries[entry].group];
        // an earlier answer to this request wrote it: the resend found it
        let outcome = match job.earlier.get(&(group.seq, op)) {
            Some(&earlier) if outcome != Outcome::Rejected => strongest(earlier, outcome),
            _ => outcome,
        };
        let server_id = response.and_then(resolve::answered_id);
        let version = response.and_then(|r| {
            let etag = r["response"]["etag"].as_str()?;
            Some(etag.trim_start_matches("W/").trim_matches('"').to_owned())
        });
        let _ = self.settled.send(Settled {
            seq: group.seq,
            op,
            identity: group.identities.get(op).cloned().flatten(),
            hash: group.hashes.get(op).copied().unwrap_or_default(),
            server_id,
            version,
            stream: request.stream.clone(),
            key: group.key.clone(),
            provenance: group.provenance.clone(),
            resource_type: resource_type.to_owned(),
            outcome,
            retries: job.attempt,
            reject_line: false,
            status: None,
            reason: String::new(),
            entry: None,
            server_outcome: None,
        });
    }

    /// Rejects the whole request and stops the run: what no retry can fix
    /// (refused credentials, a redirect).
    fn stop_run(&self, job: &Job, status: u16, why: String, outcome: Option<&Value>) {
        let n = job.request.entries.len();
        self.reject_entries(
            job,
            &(0..n).collect::<Vec<_>>(),
            Some(status),
            &why,
            outcome,
        );
        self.fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(why);
    }

    fn reject_entries(
        &self,
        job: &Job,
        which: &[usize],
        status: Option<u16>,
        reason: &str,
        outcome: Option<&Value>,
    ) {
        let request = &job.request;
        for &i in which {
            let entry = &request.entries[i];
            let group = &request.groups[entry.group];
            let text = String::from_utf8_lossy(&request.body[entry.range.clone()]).into_owned();
            let reason = if status == Some(412) {
                let searches: Vec<String> = (0..entry.operations)
                    .filter_map(|k| group.identities.get(entry.first_op + k).cloned().flatten())
                    .map(|id| id.search_url())
                    .collect();
                explain_412(reason, &searches)
            } else {
                reason.to_owned()
            };
            for k in 0..entry.operations {
                let op = entry.first_op + k;
                let reason = reason.clone();
                self.reject_op(job, group, op, k == 0, status, reason, &text, outcome);
            }
        }
    }

    /// Reports one operation rejected; the first of its record carries the
    /// request entry and the server's OperationOutcome for the rejects file.
    #[allow(clippy::too_many_arguments)]
    fn reject_op(
        &self,
        job: &Job,
        group: &fhirlift_core::planner::GroupRef,
        op: usize,
        first: bool,
        status: Option<u16>,
        reason: String,
        entry_text: &str,
        outcome: Option<&Value>,
    ) {
        let _ = self.settled.send(Settled {
            seq: group.seq,
            op,
            identity: group.identities.get(op).cloned().flatten(),
            hash: group.hashes.get(op).copied().unwrap_or_default(),
            server_id: None,
            version: None,
            stream: job.request.stream.clone(),
            key: group.key.clone(),
            provenance: group.provenance.clone(),
            resource_type: group.resource_types[op].clone(),
            outcome: Outcome::Rejected,
            retries: job.attempt,
            reject_line: first,
            status,
            reason,
            entry: first.then(|| entry_text.to_owned()),
            server_outcome: first.then(|| outcome.cloned()).flatten(),
        });
    }
}

fn entry_status(response: &Value) -> u16 {
    response["response"]["status"]
        .as_str()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Created, updated or unchanged, from an entry's status and lastModified.
fn entry_outcome(response: Option<&Value>, sent_at_ms: Option<i64>) -> Option<Outcome> {
    let response = response?;
    match entry_status(response) {
        201 => Some(Outcome::Created),
        200 => {
            let modified = response["response"]["lastModified"]
                .as_str()
                .or(response["resource"]["meta"]["lastUpdated"].as_str())
                .and_then(clock::parse_instant_ms);
            // last modified before this request left (by the server's clock): not written now
            match (modified, sent_at_ms) {
                (Some(m), Some(sent)) if m < sent => Some(Outcome::Unchanged),
                _ => Some(Outcome::Updated),
            }
        }
        _ => None,
    }
}

/// The text of an OperationOutcome's issues.
fn outcome_text(outcome: &Value) -> String {
    let issues: Vec<String> = outcome["issue"]
        .as_array()
        .map(|issues| {
            issues
                .iter()
                .map(|i| {
                    i["details"]["text"]
                        .as_str()
                        .or(i["diagnostics"].as_str())
                        .or(i["code"].as_str())
                        .unwrap_or("no details")
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    if issues.is_empty() {
        "no OperationOutcome".into()
    } else {
        issues.join("; ")
    }
}

/// The media type of every FHIR request and answer.
const FHIR_JSON: &str = "application/fhir+json";

/// The HTTP side: one client, the credentials and the base URL.
struct Http {
    stats: Arc<SenderStats>,
    client: reqwest::Client,
    auth: AuthState,
    base: String,
    asynchronous: bool,
    async_timeout: Duration,
}

/// Whether a failed write may still have been carried out by the server:
/// the connection broke after the body went, or the server failed inside.
/// A 412 on a conditional write: its search matched more than one resource.
/// Says so, with the searches that find them and what to do.
fn explain_412(reason: &str, searches: &[String]) -> String {
    format!(
        "{reason}. A conditional write found more than one resource for its identifier, so \
         the server would not choose: search {} to see them, then merge or retire the \
         duplicates on the server, or give the mapping a first identifier that names one \
         resource (with its authority and type); --strategy resolve names the matching ids",
        if searches.is_empty() {
            "the identifiers of this record (in the request above)".to_owned()
        } else {
            searches.join(", ")
        }
    )
}

/// Whether a body is what a batch or transaction is answered with.
fn is_response_bundle(body: &Value) -> bool {
    body["resourceType"] == "Bundle"
        && matches!(
            body["type"].as_str(),
            Some("batch-response" | "transaction-response")
        )
}

/// A body, said in a few words for an error (never its content).
fn describe_body(body: &Value) -> String {
    match body {
        Value::Null => "an empty or non-JSON body".to_owned(),
        Value::Object(o) => match o.get("resourceType").and_then(Value::as_str) {
            Some("Bundle") => format!(
                "a Bundle of type {}",
                o.get("type").and_then(Value::as_str).unwrap_or("(none)")
            ),
            Some(t) => format!("a {t}"),
            None => "JSON that is not a FHIR resource".to_owned(),
        },
        _ => "JSON that is not a FHIR resource".to_owned(),
    }
}

/// Whether a write's answer leaves it unknown whether the write landed: a
/// broken connection, a 500/502/504, or a 2xx that is not a response
/// Bundle (only ever asked of an answer to a bundle that was sent).
fn is_ambiguous(answer: &Answer) -> bool {
    match answer {
        Answer::Transport(_) => true,
        Answer::Http { status, body, .. } => {
            matches!(status, 500 | 502 | 504)
                || ((200..300).contains(status) && !is_response_bundle(body))
        }
        Answer::AuthRefused(_) => false,
    }
}

impl Http {
    /// One request, with the credentials; never fails, answers what happened.
    async fn exchange(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<(&'static str, Vec<u8>)>,
        prefer_async: bool,
        accept: &'static str,
    ) -> Answer {
        let started = Instant::now();
        let header = match self.auth.header(&self.client).await {
            Ok(h) => h,
            Err(e) if e.refused => {
                return Answer::AuthRefused(format!("authentication: {}", e.message));
            }
            Err(e) => return Answer::Transport(format!("authentication: {}", e.message)),
        };
        let mut request = self
            .client
            .request(method, url)
            .header(reqwest::header::ACCEPT, accept);
        if let Some((content_type, body)) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body);
        }
        if prefer_async {
            request = request.header("prefer", "respond-async");
        }
        if let Some(h) = &header {
            request = request.header(reqwest::header::AUTHORIZATION, h.clone());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Answer::Transport(transport_reason(&e)),
        };
        let status = response.status().as_u16();
        let headers = response.headers();
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let quotas = headers
            .get("ratelimit")
            .and_then(|v| v.to_str().ok())
            .map(parse_ratelimit)
            .unwrap_or_default();
        let content_location = headers
            .get(reqwest::header::CONTENT_LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let elapsed_ms = started.elapsed().as_millis() as i64;
        let sent_at_ms = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(clock::parse_http_date)
            // the Date header has whole seconds: allow one more
            .map(|secs| secs * 1000 - elapsed_ms - 1000);
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return Answer::Transport(transport_reason(&e)),
        };
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer::Http {
            status,
            used_auth: header,
            retry_after,
            quotas,
            sent_at_ms,
            content_location,
            body,
        }
    }

    /// A search (counted as one).
    async fn search_get(&self, url: &str) -> Answer {
        self.stats.searches.fetch_add(1, Ordering::Relaxed);
        self.get(url).await
    }

    async fn get(&self, url: &str) -> Answer {
        self.exchange(reqwest::Method::GET, url, None, false, FHIR_JSON)
            .await
    }

    /// A Binary's own content: Medplum answers `Binary/id` read as FHIR
    /// JSON with the resource's metadata only (no `data`), and with the
    /// stored bytes when any other type is accepted.
    async fn get_content(&self, url: &str) -> Answer {
        self.exchange(reqwest::Method::GET, url, None, false, "*/*")
            .await
    }

    async fn post_form(&self, url: &str, form: String) -> Answer {
        self.stats.searches.fetch_add(1, Ordering::Relaxed);
        let body = Some(("application/x-www-form-urlencoded", form.into_bytes()));
        self.exchange(reqwest::Method::POST, url, body, false, FHIR_JSON)
            .await
    }

    /// Posts a bundle to the base. Batches go as async jobs when asked
    /// (transactions never: Medplum refuses async transactions).
    async fn post_bundle(&self, body: Vec<u8>, kind: RequestKind) -> Answer {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        let prefer_async = self.asynchronous && kind != RequestKind::Transaction;
        let url = format!("{}/", self.base);
        let answer = self
            .exchange(
                reqwest::Method::POST,
                &url,
                Some((FHIR_JSON, body)),
                prefer_async,
                FHIR_JSON,
            )
            .await;
        match answer {
            Answer::Http {
                status: 202,
                content_location: Some(status_url),
                sent_at_ms,
                ..
            } if prefer_async => self.await_job(&status_url, sent_at_ms).await,
            other => other,
        }
    }

    /// Polls an async job until it is done, then reads its batch-response.
    async fn await_job(&self, status_url: &str, sent_at_ms: Option<i64>) -> Answer {
        let started = Instant::now();
        let mut delay = Duration::from_millis(150);
        loop {
            if started.elapsed() > self.async_timeout {
                return Answer::Transport(format!(
                    "the async job {status_url} did not finish in {} s",
                    self.async_timeout.as_secs()
                ));
            }
            let answer = self.get(status_url).await;
            match answer {
                Answer::Http {
                    status: 202,
                    retry_after,
                    ..
                } => {
                    tokio::time::sleep(retry_after.unwrap_or(delay).min(Duration::from_secs(10)))
                        .await;
                    // a job of one bundle takes about a second: poll often
                    // enough that waiting for it costs little over a
                    // synchronous answer, and no more than once a second
                    delay = (delay * 5 / 4).min(Duration::from_secs(1));
                }
                Answer::Http {
                    status: 200..=299,
                    body,
                    quotas,
                    ..
                } if body["resourceType"] == "AsyncJob" => {
                    return self.job_results(&body, quotas, sent_at_ms).await;
                }
                // a server that answered the bundle itself
                other => return other,
            }
        }
    }

    /// The batch-response of a finished job, from its output Binary.
    async fn job_results(
        &self,
        job: &Value,
        quotas: Vec<Quota>,
        sent_at_ms: Option<i64>,
    ) -> Answer {
        let params = job["output"]["parameter"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let results = params
            .iter()
            .find(|p| p["name"] == "results")
            .and_then(|p| p["valueReference"]["reference"].as_str());
        let failed = |why: String| Answer::Http {
            status: 500,
            used_auth: None,
            retry_after: None,
            quotas: quotas.clone(),
            sent_at_ms,
            content_location: None,
            body: serde_json::json!({
                "resourceType": "OperationOutcome",
                "issue": [{ "severity": "error", "code": "exception", "details": { "text": why } }]
            }),
        };
        if job["status"] != "completed" {
            let why = params
                .iter()
                .find(|p| p["name"] == "error")
                .and_then(|p| p["valueString"].as_str())
                .unwrap_or("no reason given");
            return failed(format!("the async job ended {}: {why}", job["status"]));
        }
        let Some(reference) = results else {
            return failed("the async job completed without results".into());
        };
        let url = if reference.starts_with("http") {
            reference.to_owned()
        } else {
            format!("{}/{reference}", self.base)
        };
        // the Binary's content is the batch-response; a server that
        // answers the resource instead holds it inline (base64) or at a URL
        let mut answer = self.get_content(&url).await;
        for _ in 0..2 {
            let Answer::Http {
                status: 200..=299,
                body,
                ..
            } = &answer
            else {
                return answer;
            };
            if body["resourceType"] == "Bundle" {
                break;
            }
            if let Some(data) = body["data"].as_str() {
                use base64::Engine as _;
                let bundle = base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .unwrap_or(Value::Null);
                if let Answer::Http { body, .. } = &mut answer {
                    *body = bundle;
                }
                break;
            }
            match body["url"].as_str() {
                Some(u) => answer = self.get_content(u).await,
                None => return failed(format!("{reference} holds no batch-response")),
            }
        }
        if let Answer::Http {
            sent_at_ms: s,
            quotas: q,
            ..
        } = &mut answer
        {
            *s = sent_at_ms;
            *q = quotas;
        }
        answer
    }
}

/// A transport error in words, without the request (no patient data).
fn transport_reason(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the answer was cut off"
    } else {
        "the connection failed"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind} ({detail})")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_http_is_insecure_unless_it_stays_on_this_machine() {
        assert_eq!(
            insecure_remote_host("http://fhir.example.org/fhir/R4").as_deref(),
            Some("fhir.example.org")
        );
        assert_eq!(
            insecure_remote_host("http://10.1.2.3:8103/fhir").as_deref(),
            Some("10.1.2.3")
        );
        for safe in [
            "https://fhir.example.org/fhir/R4",
            "http://127.0.0.1:8103/fhir/R4",
            "http://127.8.0.1/fhir",
            "http://localhost:8103/fhir/R4",
            "http://[::1]:8103/fhir/R4",
        ] {
            assert_eq!(insecure_remote_host(safe), None, "{safe}");
        }
    }

    use super::*;

    #[test]
    fn a_transaction_whose_failures_pass_is_sent_again_whole_unless_a_bare_create_landed() {
        let v =
            |statuses: &[u16], idempotent| transaction_verdict(statuses, idempotent, is_transient);
        assert_eq!(v(&[201, 200], true), Verdict::Written);
        // Medplum without transaction-bundles: one entry lost a serialization race
        assert_eq!(v(&[201, 409], true), Verdict::Resend);
        assert_eq!(v(&[200, 429], true), Verdict::Resend);
        assert_eq!(v(&[409, 409], false), Verdict::Resend);
        // a bare POST that landed would be repeated
        assert_eq!(v(&[201, 409], false), Verdict::Partial);
        assert_eq!(v(&[201, 400], true), Verdict::Partial);
        assert_eq!(v(&[400, 409], true), Verdict::Refused);
    }

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
