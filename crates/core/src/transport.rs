//! The transport contract: where planned requests go ([`RequestSink`]) and
//! what comes back ([`Settled`] operations and their [`Outcome`]s).
//!
//! API boundary: the pipeline submits to a `RequestSink` and reads
//! `Settled`; the HTTP sender, the dry-run writer and the benchmarks'
//! [`DiscardSink`] implement it. Neither side imports the other.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::planner::Request;

/// Why a run cannot go on (the sink cannot take more requests, the ledger
/// or the rejects file failed): the run stops. It keeps its cause, so
/// `{:#}` prints the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Said in words only.
    #[error("{0}")]
    Stopped(String),
    /// What failed, and the error that made it fail.
    #[error("{context}")]
    Caused {
        context: String,
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Another library's error, as it says it.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl SinkError {
    pub fn new(message: impl Into<String>) -> SinkError {
        SinkError::Stopped(message.into())
    }

    /// `context`, caused by `cause`.
    pub fn caused(
        context: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> SinkError {
        SinkError::Caused {
            context: context.into(),
            cause: Box::new(cause),
        }
    }

    /// An error of another library, kept whole.
    pub fn from_error(cause: impl std::error::Error + Send + Sync + 'static) -> SinkError {
        SinkError::Failed(Box::new(cause))
    }
}

/// Where planned requests go: a server (the sender), files, or nowhere.
pub trait RequestSink {
    fn submit(&mut self, request: Request) -> Result<(), SinkError>;
    /// What the server has answered for since the last call (never blocks).
    fn settled(&mut self) -> Vec<Settled> {
        Vec::new()
    }
    /// Requests in flight and retries so far, for progress lines.
    fn activity(&self) -> Option<(u64, u64)> {
        None
    }
    /// Every request of `phase` has been submitted.
    fn end_phase(&mut self, _phase: usize) -> Result<(), SinkError> {
        Ok(())
    }
    /// The run was stopped (Ctrl-C): send nothing more, retry nothing;
    /// what is in flight is answered. What is dropped stays unsettled, so
    /// the ledger's marks stay below it and the next run sends it.
    fn stop(&mut self) {}
    /// The HTTP requests really sent, when the sink is a server.
    fn traffic(&self) -> Option<Traffic> {
        None
    }
}

/// What went over the wire: bundles written (retries included) and
/// searches made (the resolve strategy's lookups, counts and pages).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Traffic {
    pub writes: u64,
    pub searches: u64,
    /// Requests that waited for the server's quota window (429s, or held
    /// back because the quota left could not pay for them).
    pub quota_waits: u64,
}

/// Counts requests and drops them: `check` and benchmarks.
#[derive(Debug, Default)]
pub struct DiscardSink {
    pub requests: u64,
    pub bytes: u64,
}

impl RequestSink for DiscardSink {
    fn submit(&mut self, request: Request) -> Result<(), SinkError> {
        self.requests += 1;
        self.bytes += request.body.len() as u64;
        Ok(())
    }
}

/// What became of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Created,
    Updated,
    /// The server kept the stored version: the content was the same.
    Unchanged,
    Rejected,
}

/// One operation the server has answered for (or that was given up on).
#[derive(Debug, Clone)]
pub struct Settled {
    pub stream: Arc<str>,
    pub key: String,
    pub provenance: crate::record::Provenance,
    pub resource_type: String,
    pub outcome: Outcome,
    /// Attempts it took beyond the first.
    pub retries: u32,
    /// For rejects: true on the first operation of the rejected entry, so
    /// a record is written to the rejects file once.
    pub reject_line: bool,
    pub status: Option<u16>,
    pub reason: String,
    /// The request entry (JSON) and the server's OperationOutcome, for the rejects file.
    pub entry: Option<String>,
    pub server_outcome: Option<Value>,
    /// The record's place in its stream, the operation's index in its
    /// group, its identity and content hash, and what the server said it
    /// is (id, version): for the ledger.
    pub seq: u64,
    pub op: usize,
    pub identity: Option<crate::group::Identity>,
    pub hash: u128,
    pub server_id: Option<String>,
    pub version: Option<String>,
}

/// One identity of the ledger's sample (a delta run asks the server whether it still holds them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampledIdentity {
    pub resource_type: String,
    pub system: String,
    pub value: String,
    pub server_id: Option<String>,
}

/// Whether a host name or address (`[::1]` bracketed or not) is this
/// machine: `localhost` or a loopback address.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
