//! fhirlift-sandbox: an embedded FHIR R4 server on loopback.
//!
//! It is a test double for a remote FHIR server: the default run of
//! `cargo xtask migrate`, the end-to-end tests and the benchmarks write to
//! it over real HTTP. It keeps resources in memory with FHIR semantics:
//!
//! - create, read, update by id, conditional update
//!   (`PUT Type?identifier=…`: 0 matches creates, 1 updates, 2+ is 412),
//!   unchanged content keeping its version;
//! - search by identifier (one value or many, comma-separated), `_count`,
//!   `_summary=count`;
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

mod http;
mod query;
mod store;
mod time;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// HTTP 503 before processing.
    pub rate_503: f64,
    /// The connection is cut instead of answered; half of them after the
    /// request was processed (the write happened, the answer is lost).
    pub rate_reset: f64,
    /// Added latency, uniformly between the two bounds.
    pub latency: Option<(Duration, Duration)>,
    /// Seed for the fault dice (the same seed gives the same faults in order).
    pub seed: u64,
}

/// Limits a server enforces, like Medplum's.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Most entries in a batch (400 over it).
    pub max_batch_entries: Option<usize>,
    /// Most bytes in a request body (400 "File too large" over it, as Medplum answers).
    pub max_body_bytes: Option<usize>,
    /// Most entries in a transaction (400 over it).
    pub max_transaction_entries: Option<usize>,
    /// A write quota like Medplum's `fhirInteractions`.
    pub quota: Option<Quota>,
}

/// A quota of units per window: each write costs `write_cost`. Every answer
/// carries `RateLimit: "requests";r=…;t=…, "fhirInteractions";r=…;t=…`; over
/// the quota a request gets 429 (no Retry-After) and, inside a batch, every
/// entry from the one that ran out onward gets 429, as Medplum answers.
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
}

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
}

impl Shared {
    /// Takes `writes` writes from the quota; false when it does not have them.
    pub fn charge(&self, writes: u64) -> bool {
        let Some(q) = &self.config.limits.quota else {
            return true;
        };
        let mut used = self.quota_used.lock().unwrap_or_else(|p| p.into_inner());
        if used.0.elapsed() >= q.window {
            *used = (std::time::Instant::now(), 0);
        }
        let cost = writes * q.write_cost;
        if used.1 + cost > q.units {
            self.stats.throttled.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        used.1 += cost;
        true
    }

    /// The `RateLimit` header for the quota's state, if there is a quota.
    pub fn ratelimit(&self) -> Option<String> {
        let q = self.config.limits.quota.as_ref()?;
        let used = self.quota_used.lock().unwrap_or_else(|p| p.into_inner());
        let (remaining, reset) = if used.0.elapsed() >= q.window {
            (q.units, q.window)
        } else {
            (q.units.saturating_sub(used.1), q.window - used.0.elapsed())
        };
        let t = reset.as_secs_f64().ceil() as u64;
        Some(format!(
            "\"requests\";r=600;t={t}, \"fhirInteractions\";r={remaining};t={t}"
        ))
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
    pub async fn start_with(config: SandboxConfig, store: Store) -> Result<Sandbox, SandboxError> {
        let port = config.port;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|source| SandboxError::Bind { port, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SandboxError::Bind { port, source })?;
        let shared = Arc::new(Shared {
            dice: AtomicU64::new(config.faults.seed),
            config,
            store: Mutex::new(store),
            stats: Stats::default(),
            tokens: Mutex::new(std::collections::HashMap::new()),
            quota_used: Mutex::new((std::time::Instant::now(), 0)),
            addr,
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
