//! The HTTP side of the sender ([`Http`]): one client, the credentials
//! and the base URL; a request's answer read into an [`Answer`]; async
//! batches (`Prefer: respond-async`, job polling, the output Binary).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use fhirlift_core::planner::RequestKind;

use crate::auth::AuthState;
use crate::clock;
use crate::outcomes::{is_response_bundle, outcome_text};
use crate::quota::{Quota, parse_ratelimit};
use crate::stats::SenderStats;

/// What one HTTP attempt gave.
pub(crate) enum Answer {
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
    pub(crate) fn nothing_sent(quotas: Vec<Quota>) -> Answer {
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

/// Every HTTP client of fhirlift: its user agent, and no redirects
/// followed. A redirect would send a request's body (patient data) to
/// wherever the answer points; a 3xx stops the run instead
/// ([`redirect_refused`]).
pub(crate) fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("fhirlift/", env!("CARGO_PKG_VERSION")))
}

/// Why a run stops at a redirect.
pub(crate) fn redirect_refused(status: u16, body: &Value) -> String {
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

/// The media type of every FHIR request and answer.
pub(crate) const FHIR_JSON: &str = "application/fhir+json";

/// The HTTP side: one client, the credentials and the base URL.
pub(crate) struct Http {
    pub(crate) stats: Arc<SenderStats>,
    pub(crate) client: reqwest::Client,
    pub(crate) auth: AuthState,
    pub(crate) base: String,
    pub(crate) asynchronous: bool,
    pub(crate) async_timeout: Duration,
}

impl Http {
    /// One request, with the credentials; never fails, answers what happened.
    pub(crate) async fn exchange(
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
    pub(crate) async fn search_get(&self, url: &str) -> Answer {
        self.stats.searches.fetch_add(1, Ordering::Relaxed);
        self.get(url).await
    }

    pub(crate) async fn get(&self, url: &str) -> Answer {
        self.exchange(reqwest::Method::GET, url, None, false, FHIR_JSON)
            .await
    }

    /// A Binary's own content: Medplum answers `Binary/id` read as FHIR
    /// JSON with the resource's metadata only (no `data`), and with the
    /// stored bytes when any other type is accepted.
    pub(crate) async fn get_content(&self, url: &str) -> Answer {
        self.exchange(reqwest::Method::GET, url, None, false, "*/*")
            .await
    }

    pub(crate) async fn post_form(&self, url: &str, form: String) -> Answer {
        self.stats.searches.fetch_add(1, Ordering::Relaxed);
        let body = Some(("application/x-www-form-urlencoded", form.into_bytes()));
        self.exchange(reqwest::Method::POST, url, body, false, FHIR_JSON)
            .await
    }

    /// Posts a bundle to the base. Batches go as async jobs when asked
    /// (transactions never: Medplum refuses async transactions).
    pub(crate) async fn post_bundle(&self, body: Vec<u8>, kind: RequestKind) -> Answer {
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
    pub(crate) async fn await_job(&self, status_url: &str, sent_at_ms: Option<i64>) -> Answer {
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
    pub(crate) async fn job_results(
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
pub(crate) fn transport_reason(e: &reqwest::Error) -> String {
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

/// Whether a write's answer leaves it unknown whether the write landed: a
/// broken connection, a 500/502/504, or a 2xx that is not a response
/// Bundle (only ever asked of an answer to a bundle that was sent).
pub(crate) fn is_ambiguous(answer: &Answer) -> bool {
    match answer {
        Answer::Transport(_) => true,
        Answer::Http { status, body, .. } => {
            matches!(status, 500 | 502 | 504)
                || ((200..300).contains(status) && !is_response_bundle(body))
        }
        Answer::AuthRefused(_) => false,
    }
}
