//! How to reach the server ([`SenderConfig`]), and which URLs are refused
//! for plain HTTP.

use std::sync::Arc;
use std::time::Duration;

use fhirlift_core::profile::WriteStrategy;
use fhirlift_core::transport::is_loopback_host;

use crate::auth::Auth;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
