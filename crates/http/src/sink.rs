//! [`SenderSink`]: the (synchronous) pipeline's face to the dispatcher
//! running on a tokio runtime.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use fhirlift_core::planner::Request;
use fhirlift_core::profile::WriteStrategy;
use fhirlift_core::transport::{RequestSink, Settled, SinkError};

use crate::auth::AuthState;
use crate::client::{Http, client_builder};
use crate::config::SenderConfig;
use crate::dispatcher::{Dispatcher, Msg, Stop};
use crate::probe::ProbeError;
use crate::quota::Pacer;
use crate::resolve::Resolver;
use crate::stats::SenderStats;
use crate::window::Window;
use crate::{breaker, probe};

/// The pipeline's side of the sender: submit blocks while the window is full.
pub struct SenderSink {
    /// Ctrl-C, told to the dispatcher out of band (its request channel may
    /// be full of work it is waiting to retry).
    pub(crate) stop: Arc<Stop>,
    /// The dispatcher's HTTP side, for the questions asked before a run.
    pub(crate) http: Arc<Http>,
    pub(crate) fatal: Arc<std::sync::Mutex<Option<String>>>,
    pub(crate) tx: Option<mpsc::Sender<Msg>>,
    pub(crate) settled: std::sync::mpsc::Receiver<Settled>,
    pub(crate) task: Option<tokio::task::JoinHandle<()>>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub stats: Arc<SenderStats>,
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
            .map_err(|e| SinkError::caused("cannot build the HTTP client", e))?;
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
                // amendments are read and written by id, whatever the strategy
                (WriteStrategy::Conditional, false) => Some(Arc::new(Resolver::amendments_only())),
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
    pub fn principal(&self) -> Result<Option<String>, ProbeError> {
        self.runtime.block_on(probe::principal(&self.http))
    }

    /// Of a sample of identities the ledger holds, those the server no
    /// longer has, per resource type as (missing, sampled): one search
    /// per type, counted with the run's searches.
    pub fn missing_from_server(
        &self,
        sample: &[fhirlift_core::transport::SampledIdentity],
    ) -> Result<std::collections::BTreeMap<String, (usize, usize)>, ProbeError> {
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
    pub(crate) fn check_fatal(&self) -> Result<(), SinkError> {
        match self
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(why) => Err(SinkError::new(format!("the run stopped: {why}"))),
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
            .ok_or_else(|| SinkError::new("the sender has stopped"))?;
        tx.blocking_send(Msg::Request(request))
            .map_err(|_| SinkError::new("the sender stopped unexpectedly"))
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
            .ok_or_else(|| SinkError::new("the sender has stopped"))?;
        let (done, wait) = oneshot::channel();
        tx.blocking_send(Msg::Barrier(done))
            .map_err(|_| SinkError::new("the sender stopped unexpectedly"))?;
        wait.blocking_recv()
            .map_err(|_| SinkError::new("the sender stopped before the phase was answered"))?;
        self.check_fatal()
    }
}
