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
mod client;
mod clock;
mod config;
mod dispatcher;
mod outcomes;
mod probe;
mod quota;
mod reader;
mod resolve;
mod sink;
mod stats;
mod window;

pub use auth::Auth;
pub use config::{SenderConfig, insecure_remote_host};
pub use probe::{ProbeError, fetch_capability};
pub use reader::{ReadError, ServerReader};
pub use sink::SenderSink;
pub use stats::SenderStats;
