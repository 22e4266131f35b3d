//! fhirlift-sandbox: an embedded FHIR R4 server on loopback.
//!
//! It is a test double for a remote FHIR server: the default run of
//! `cargo xtask migrate`, the end-to-end tests and the benchmarks write to
//! it over real HTTP. It keeps resources in memory with FHIR semantics:
//!
//! - create, read, update by id, conditional update
//!   (`PUT Type?identifier=…`: 0 matches creates, 1 updates, 2+ is 412),
//!   unchanged content keeping its version;
//! - search by identifier (one value or many, comma-separated, or a whole
//!   system with `identifier=system|`), as `GET Type?…` or as
//!   `POST Type/_search` with a form-encoded body; `_summary=count`; pages of
//!   `_count` (default 20, at most 1000) from `_offset`, in id order, with
//!   `self` and `next` links;
//! - batch and transaction bundles: transactions all-or-nothing, `urn:uuid`
//!   references rewritten, transactions nested in a batch (`POST /`),
//!   conditional references (`Patient?identifier=…`) resolved to `Type/id`,
//!   0 or 2+ matches an error;
//! - `versionId` and `lastUpdated`, a CapabilityStatement at `/metadata`.
//!
//! Knobs ([`Faults`], [`Limits`]) inject 429s (with or without
//! Retry-After), 409s, 503s, connection resets and latency, and refuse
//! bundles over a size. [`Mode::Sink`] only parses and counts, for
//! benchmarks. The store can be saved to and loaded from NDJSON files.
//!
//! [`SandboxConfig::medplum`] makes the sandbox behave like a Medplum 5
//! server as `shared/MEDPLUM.md` measured it ([`MedplumBehaviour`]): it calls
//! itself `medplum`, answers a `RateLimit` header on every response, refuses
//! bodies over 1 MB with 400 "File too large", runs batch entries bucketed
//! (nested transactions, then creates, then updates), simulates
//! serialization conflicts (409) among concurrent conditional writes, runs
//! transactions like batches unless the project has `transaction-bundles`
//! (then atomic, with Medplum's 8-entry and 50-update limits), adds a
//! `display` to resolved conditional references, spends server time per
//! write and search on a few workers, and runs `Prefer: respond-async`
//! batches as jobs (`{base}/job/{id}/status`, the answer in a `Binary`).

mod bundle;
mod http;
mod query;
mod store;
mod time;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use store::Store;

/// What the server does with what it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A FHIR server with a store.
    #[default]
    Fhir,
    /// Parses bundles and answers success for every entry; stores nothing.
    Sink,
}

/// Failures to inject, each a rate between 0 and 1 per request.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// HTTP 429 before processing; half of them carry `Retry-After: 1`.
    pub rate_429: f64,
    /// Per batch entry: 409 (a serialization conflict), entry not processed.
    pub rate_409: f64,
    /// Per update by id carrying `If-Match`: another client writes the
    /// resource just before (its version moves on, its content stays), so
    /// the update meets 412 Precondition Failed.
    pub rate_412: f64,
    /// HTTP 503 before processing.
    pub rate_503: f64,
    /// The connection is cut instead of answered; half of them after the
    /// request was processed (the write happened, the answer is lost).
    pub rate_reset: f64,
    /// Added latency, uniformly between the two bounds.
    pub latency: Option<(Duration, Duration)>,
    /// A search answered 200 with something that is not a searchset Bundle
    /// (as a proxy's login page would be), and what.
    pub rate_bad_search: f64,
    pub bad_search: BadSearch,
    /// A bundle processed (written) and answered 200 with an HTML page.
    pub rate_bad_answer: f64,
    /// Seed for the fault dice (the same seed gives the same faults in order).
    pub seed: u64,
}

/// What a search answered by [`Faults::rate_bad_search`] holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BadSearch {
    /// An empty body.
    #[default]
    Empty,
    /// An HTML page.
    Html,
    /// JSON that is not a searchset (an OperationOutcome).
    NotSearchset,
}

/// Limits a server enforces, like Medplum's.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Most entries in a batch (400 over it).
    pub max_batch_entries: Option<usize>,
    /// Most bytes in a request body (400 "File too large" over it, as Medplum
    /// answers). In Medplum mode none means 1,000,000; async batches may
    /// always hold 50 MB.
    pub max_body_bytes: Option<usize>,
    /// Most entries in a transaction (400 over it).
    pub max_transaction_entries: Option<usize>,
    /// A write quota like Medplum's `fhirInteractions`.
    pub quota: Option<Quota>,
    /// Resolve conditional references (`Patient?identifier=…`) only inside
    /// transactions, as FHIR R4 requires of a server; elsewhere they are
    /// 400. (Medplum, and the sandbox by default, resolve them everywhere.)
    pub conditional_references_in_transactions_only: bool,
}

/// A quota of units per window: each write costs `write_cost`. Every answer
/// carries `RateLimit: "requests";r=…;t=…, "fhirInteractions";r=…;t=…`; over
/// the quota a request gets 429 (no Retry-After) and, inside a batch, every
/// entry from the one that ran out onward (in the order entries run) gets
/// 429, as Medplum answers. An async batch job waits for the window to reset
/// instead.
#[derive(Debug, Clone)]
pub struct Quota {
    pub units: u64,
    pub window: Duration,
    pub write_cost: u64,
}

/// OAuth2 client credentials the sandbox requires (SMART backend services,
/// as Medplum serves them): a token endpoint at `/oauth2/token` named by
/// `{base}/.well-known/smart-configuration`, bearer tokens on every request.
#[derive(Debug, Clone)]
pub struct SandboxAuth {
    pub client_id: String,
    pub client_secret: String,
    /// The `expires_in` the token endpoint announces.
    pub announced_lifetime: Duration,
    /// How long a token really works: shorter than announced makes the
    /// server answer 401 to a token the client still trusts.
    pub real_lifetime: Duration,
    /// How many requests a token serves before it dies (none: no limit):
    /// a 401 on a clock of requests, for tests that must not hang on time.
    pub uses: Option<u64>,
}

/// Behaviour of a Medplum 5 server, as ../shared/MEDPLUM.md measured it.
#[derive(Debug, Clone)]
pub struct MedplumBehaviour {
    /// The project has the `transaction-bundles` feature: transactions are atomic, with the 8 / 50 limits.
    pub transaction_bundles: bool,
    /// Server work per write (create, update, or an unchanged write): the request holds one of `workers` for this long per write.
    pub write_cost: Duration,
    /// Server work per search: a search request (per page), the resolution of each conditional write, each conditional reference resolved.
    pub search_cost: Duration,
    /// Requests the server works on at once (a tokio Semaphore); the others queue.
    pub workers: usize,
    /// Per conditional write entry (conditional PUT or conditional reference), the chance of a 409 "could not serialize access due to read/write dependencies among transactions" for EACH OTHER request holding conditional writes that is in flight at the same moment (chance = min(0.9, conflict_rate * others)). Seeded by Faults::seed via Shared::roll.
    pub conflict_rate: f64,
}

impl Default for MedplumBehaviour {
    fn default() -> MedplumBehaviour {
        MedplumBehaviour {
            transaction_bundles: false,
            write_cost: Duration::ZERO,
            search_cost: Duration::ZERO,
            workers: 4,
            conflict_rate: 0.05,
        }
    }
}

/// How to run a sandbox.
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    pub mode: Mode,
    pub faults: Faults,
    pub limits: Limits,
    /// Require bearer tokens from client credentials (none: open).
    pub auth: Option<SandboxAuth>,
    /// The port to listen on (0: any free one).
    pub port: u16,
    /// Behave like a Medplum 5 server (none: a generic FHIR server).
    pub medplum: Option<MedplumBehaviour>,
    /// Store resources that are not valid FHIR R4 instead of refusing them
    /// with a 400 (for tests that need raw writes).
    pub no_validation: bool,
}

/// The quota a Medplum-mode sandbox announces when [`Limits::quota`] is
/// none: 50,000 units a minute, never used up (nothing is counted against it).
const MEDPLUM_DEFAULT_QUOTA: (u64, Duration) = (50_000, Duration::from_secs(60));
/// Medplum's synchronous body limit (`maxJsonSize`).
const MEDPLUM_MAX_BODY: usize = 1_000_000;
/// Medplum's body limit for async (`Prefer: respond-async`) batches.
const MEDPLUM_MAX_ASYNC_BODY: usize = 50_000_000;

/// Counters for tests and the console.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub entries: AtomicU64,
    pub faults: AtomicU64,
    /// Tokens issued by the token endpoint.
    pub tokens: AtomicU64,
    /// Requests refused with 401.
    pub unauthorized: AtomicU64,
    /// Requests and entries refused with 429 for the quota.
    pub throttled: AtomicU64,
    /// Search requests (`GET Type?…` and `POST Type/_search`, each page one).
    pub searches: AtomicU64,
    /// 409s from the Medplum conflict simulation (entries and requests).
    pub conflicts: AtomicU64,
}

/// How a bundle meets a used-up quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnQuota {
    /// 429 (for the entry and every one after it in a batch).
    Refuse,
    /// Sleep until the quota window resets (async jobs).
    Wait,
}

/// Shared by every request handler.
pub(crate) struct Shared {
    pub config: SandboxConfig,
    pub store: Mutex<Store>,
    pub stats: Stats,
    dice: AtomicU64,
    /// Issued tokens and when they stop working.
    pub tokens: Mutex<std::collections::HashMap<String, (std::time::Instant, Option<u64>)>>,
    /// The quota window's start and the units used in it.
    pub quota_used: Mutex<(std::time::Instant, u64)>,
    pub addr: SocketAddr,
    /// Medplum mode: the workers requests wait for.
    pub workers: tokio::sync::Semaphore,
    /// Medplum mode: requests holding conditional writes now in flight.
    pub conditional_in_flight: AtomicUsize,
    /// Async jobs: id → the AsyncJob resource as it stands.
    pub jobs: Mutex<std::collections::HashMap<String, serde_json::Value>>,
    /// Binaries written by async jobs: id → the batch-response bundle.
    pub binaries: Mutex<std::collections::HashMap<String, serde_json::Value>>,
    /// Numbers the ids of jobs and binaries.
    pub next_job: AtomicU64,
}

impl Shared {
    /// Takes `writes` writes from the quota; false (a 429) when it does not have them.
    pub fn charge(&self, writes: u64) -> bool {
        match self.take(writes, false) {
            Ok(()) => true,
            Err(_) => {
                self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Takes `writes` writes from the quota, or waits for the window to
    /// reset (`OnQuota::Wait`); false when it refused them.
    pub async fn charge_or_wait(&self, writes: u64, on_quota: OnQuota) -> bool {
        if on_quota == OnQuota::Refuse {
            return self.charge(writes);
        }
        loop {
            match self.take(writes, true) {
                Ok(()) => return true,
                Err(wait) => tokio::time::sleep(wait.max(Duration::from_millis(1))).await,
            }
        }
    }

    /// Takes `writes` writes from the quota, or answers how long until the
    /// window resets. With `oversize`, more than the whole quota is taken
    /// from a fresh window (a waiting job must not wait forever).
    fn take(&self, writes: u64, oversize: bool) -> Result<(), Duration> {
        let Some(q) = &self.config.limits.quota else {
            return Ok(());
        };
        let mut used = self.quota_used.lock().unwrap_or_else(|p| p.into_inner());
        if used.0.elapsed() >= q.window {
            *used = (std::time::Instant::now(), 0);
        }
        let cost = writes.saturating_mul(q.write_cost);
        if used.1.saturating_add(cost) > q.units && !(oversize && used.1 == 0) {
            return Err(q.window.saturating_sub(used.0.elapsed()));
        }
        used.1 = used.1.saturating_add(cost);
        Ok(())
    }

    /// The `RateLimit` header for the quota's state: with a quota, or in
    /// Medplum mode (a large quota that is never used up when none is set).
    pub fn ratelimit(&self) -> Option<String> {
        let used = self.quota_used.lock().unwrap_or_else(|p| p.into_inner());
        let (remaining, reset) = match (&self.config.limits.quota, &self.config.medplum) {
            (Some(q), _) if used.0.elapsed() >= q.window => (q.units, q.window),
            (Some(q), _) => (
                q.units.saturating_sub(used.1),
                q.window.saturating_sub(used.0.elapsed()),
            ),
            (None, Some(_)) => {
                let (units, window) = MEDPLUM_DEFAULT_QUOTA;
                let into = used.0.elapsed().as_millis() % window.as_millis();
                let reset = window.saturating_sub(Duration::from_millis(into as u64));
                (units, reset)
            }
            (None, None) => return None,
        };
        let t = reset.as_secs_f64().ceil() as u64;
        Some(format!(
            "\"requests\";r=600;t={t}, \"fhirInteractions\";r={remaining};t={t}"
        ))
    }

    /// The most bytes a request body may hold (none: no limit): the limit
    /// set, else Medplum's 1 MB in Medplum mode; 50 MB for an async batch.
    pub fn body_limit(&self, async_job: bool) -> Option<usize> {
        let set = self.config.limits.max_body_bytes;
        match (&self.config.medplum, async_job) {
            (None, _) => set,
            (Some(_), false) => Some(set.unwrap_or(MEDPLUM_MAX_BODY)),
            (Some(_), true) => Some(set.unwrap_or(0).max(MEDPLUM_MAX_ASYNC_BODY)),
        }
    }

    /// A number in [0, 1) from the seeded fault dice.
    pub fn roll(&self) -> f64 {
        let mut z = self
            .dice
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A running sandbox. Dropping it stops the server.
pub struct Sandbox {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The sandbox could not start or persist.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("{path}: {message}")]
    Store { path: String, message: String },
}

impl Sandbox {
    /// Starts a sandbox on 127.0.0.1 with an empty store.
    pub async fn start(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        Sandbox::start_with(config, Store::default()).await
    }

    /// Starts a sandbox holding `store`.
    pub async fn start_with(
        config: SandboxConfig,
        mut store: Store,
    ) -> Result<Sandbox, SandboxError> {
        store.validate = !config.no_validation;
        let port = config.port;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|source| SandboxError::Bind { port, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SandboxError::Bind { port, source })?;
        let workers = config
            .medplum
            .as_ref()
            .map_or(1, |m| m.workers)
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            dice: AtomicU64::new(config.faults.seed),
            config,
            store: Mutex::new(store),
            stats: Stats::default(),
            tokens: Mutex::new(std::collections::HashMap::new()),
            quota_used: Mutex::new((std::time::Instant::now(), 0)),
            addr,
            workers: tokio::sync::Semaphore::new(workers),
            conditional_in_flight: AtomicUsize::new(0),
            jobs: Mutex::new(std::collections::HashMap::new()),
            binaries: Mutex::new(std::collections::HashMap::new()),
            next_job: AtomicU64::new(0),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = http::router(shared.clone());
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "sandbox server stopped");
            }
        });
        Ok(Sandbox {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The FHIR base URL, e.g. `http://127.0.0.1:40123/fhir/R4`.
    pub fn base_url(&self) -> String {
        format!("http://{}/fhir/R4", self.addr)
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Runs `f` on the store (for tests and saving).
    pub fn with_store<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self.shared.store.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Changes the store behind the server's back, as another client
    /// would (tests).
    pub fn with_store_mut<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        f(&mut self.shared.store.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Saves the store as NDJSON files, one per resource type.
    pub fn save(&self, dir: &Path) -> Result<(), SandboxError> {
        self.with_store(|s| s.save(dir))
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
