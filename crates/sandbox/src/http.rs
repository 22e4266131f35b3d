//! The sandbox's HTTP side: routes, fault injection, plain requests,
//! searches, async batch jobs (bundles themselves are in `bundle`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::bundle::{
    Work, Write, busy, conflict, lock, outside_transaction, process_bundle, single_write, throttled,
};
use crate::query::parse_search;
use crate::store::{FhirError, Store, WriteResult, Written};
use crate::{Mode, OnQuota, Shared};

type Shared_ = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/fhir/R4/metadata", get(metadata))
        .route(
            "/fhir/R4/.well-known/smart-configuration",
            get(smart_configuration),
        )
        .route("/oauth2/token", post(token))
        .route("/fhir/R4", post(bundle))
        .route("/fhir/R4/", post(bundle))
        .route("/fhir/R4/job/{id}/status", get(job_status))
        .route(
            "/fhir/R4/{resource_type}",
            get(search).post(create).put(conditional_update),
        )
        .route("/fhir/R4/{resource_type}/_search", post(post_search))
        .route("/fhir/R4/{resource_type}/{id}", get(read).put(update))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            ratelimit_header,
        ))
        .layer(DefaultBodyLimit::max(256 * 1024 * 1024))
        .with_state(shared)
}

/// Adds `RateLimit` to every answer (with a quota, or in Medplum mode).
async fn ratelimit_header(State(shared): Shared_, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    if let Some(value) = shared
        .ratelimit()
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        response.headers_mut().insert("ratelimit", value);
    }
    response
}

fn fhir_json(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    response
}

fn error_response(e: &FhirError) -> Response {
    fhir_json(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
        &e.outcome(),
    )
}

/// A body that fails at once: the client sees the connection cut.
struct BrokenBody;

impl axum::body::HttpBody for BrokenBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "sandbox fault: connection reset",
        ))))
    }
}

fn reset() -> Response {
    let mut response = Response::new(Body::new(BrokenBody));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("1000"));
    response
}

/// Applies the configured faults and the body limit around `handle`
/// (which runs only when awaited).
async fn guarded(
    shared: &Shared,
    headers: &HeaderMap,
    body_len: usize,
    body_limit: Option<usize>,
    handle: impl Future<Output = Response>,
) -> Response {
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(refusal) = unauthorized(shared, authorization) {
        return refusal;
    }
    let faults = &shared.config.faults;
    if let Some((lo, hi)) = faults.latency {
        let extra = hi.saturating_sub(lo).mul_f64(shared.roll());
        tokio::time::sleep(lo + extra).await;
    }
    if faults.rate_503 > 0.0 && shared.roll() < faults.rate_503 {
        shared.stats.faults.fetch_add(1, Ordering::Relaxed);
        let e = FhirError::new(503, "transient", "sandbox fault: service unavailable");
        return error_response(&e);
    }
    if faults.rate_429 > 0.0 && shared.roll() < faults.rate_429 {
        shared.stats.faults.fetch_add(1, Ordering::Relaxed);
        let mut r = error_response(&FhirError::new(
            429,
            "throttled",
            "sandbox fault: too many requests",
        ));
        if shared.roll() < 0.5 {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        return r;
    }
    if faults.rate_reset > 0.0 && shared.roll() < faults.rate_reset {
        shared.stats.faults.fetch_add(1, Ordering::Relaxed);
        if shared.roll() < 0.5 {
            // the write happens; the answer is lost
            drop(handle.await);
        }
        return reset();
    }
    if let Some(max) = body_limit
        && body_len > max
    {
        return error_response(&FhirError::new(400, "invalid", "File too large"));
    }
    handle.await
}

/// A 401 when the sandbox requires tokens and this request has no live one.
fn unauthorized(shared: &Shared, authorization: Option<&str>) -> Option<Response> {
    shared.config.auth.as_ref()?;
    let token = authorization.and_then(|h| h.strip_prefix("Bearer "));
    let live = token.is_some_and(|t| {
        let mut tokens = shared.tokens.lock().unwrap_or_else(|p| p.into_inner());
        match tokens.get_mut(t) {
            Some((until, uses)) if *until > std::time::Instant::now() && *uses != Some(0) => {
                if let Some(n) = uses {
                    *n -= 1;
                }
                true
            }
            _ => false,
        }
    });
    if live {
        return None;
    }
    shared.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
    Some(error_response(&FhirError::new(
        401,
        "login",
        "Unauthorized",
    )))
}

async fn smart_configuration(State(shared): Shared_) -> Response {
    fhir_json(
        StatusCode::OK,
        &json!({
            "token_endpoint": format!("http://{}/oauth2/token", shared.addr),
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "grant_types_supported": ["client_credentials"],
        }),
    )
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}

/// `POST /oauth2/token`: client credentials as Basic auth or form fields.
async fn token(State(shared): Shared_, headers: HeaderMap, body: Bytes) -> Response {
    let Some(auth) = &shared.config.auth else {
        return error_response(&FhirError::new(
            404,
            "not-found",
            "this sandbox does not require tokens",
        ));
    };
    let form: HashMap<String, String> = String::from_utf8_lossy(&body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            (
                crate::query::percent_decode(&k.replace('+', " ")),
                crate::query::percent_decode(&v.replace('+', " ")),
            )
        })
        .collect();
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(decode_base64)
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(a, b)| (a.to_owned(), b.to_owned())));
    let (id, secret) = from_header.unwrap_or_else(|| {
        (
            form.get("client_id").cloned().unwrap_or_default(),
            form.get("client_secret").cloned().unwrap_or_default(),
        )
    });
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || id != auth.client_id
        || secret != auth.client_secret
    {
        return fhir_json(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "invalid_client", "error_description": "Invalid client or secret" }),
        );
    }
    let n = shared.stats.tokens.fetch_add(1, Ordering::Relaxed) + 1;
    let access = format!("sandbox-token-{n}-{:x}", (shared.roll() * 1e12) as u64);
    shared
        .tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            access.clone(),
            (std::time::Instant::now() + auth.real_lifetime, auth.uses),
        );
    fhir_json(
        StatusCode::OK,
        &json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": auth.announced_lifetime.as_secs(),
        }),
    )
}

async fn metadata(State(shared): Shared_) -> Response {
    let software = match &shared.config.medplum {
        Some(_) => json!({ "name": "medplum", "version": "5.0.10" }),
        None => json!({ "name": "fhirlift-sandbox", "version": env!("CARGO_PKG_VERSION") }),
    };
    fhir_json(
        StatusCode::OK,
        &json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "software": software,
            "rest": [{
                "mode": "server",
                "interaction": [{ "code": "batch" }, { "code": "transaction" }],
            }],
        }),
    )
}

fn parse_body(body: &Bytes) -> Result<Value, FhirError> {
    serde_json::from_slice(body)
        .map_err(|e| FhirError::new(400, "invalid", format!("the body is not JSON: {e}")))
}

fn sink(body: &Bytes) -> Response {
    #[derive(serde::Deserialize)]
    struct Counted {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        entry: Vec<SinkEntry>,
    }
    #[derive(serde::Deserialize)]
    struct SinkEntry {
        #[serde(default)]
        request: Option<SinkRequest>,
        #[serde(default)]
        resource: Option<Nested>,
    }
    #[derive(serde::Deserialize)]
    struct SinkRequest {
        #[serde(default)]
        url: String,
    }
    #[derive(serde::Deserialize)]
    struct Nested {
        #[serde(default)]
        entry: Vec<serde::de::IgnoredAny>,
    }
    fn created(out: &mut String, n: usize) {
        for i in 0..n {
            if i > 0 {
                out.push(',');
            }
            out.push_str(r#"{"response":{"status":"201 Created"}}"#);
        }
    }
    match serde_json::from_slice::<Counted>(body) {
        Ok(b) => {
            let mut out = String::with_capacity(64 + b.entry.len() * 40);
            out.push_str(r#"{"resourceType":"Bundle","type":""#);
            out.push_str(&b.kind);
            out.push_str(r#"-response","entry":["#);
            if b.kind == "transaction" {
                created(&mut out, b.entry.len());
            } else {
                for (i, e) in b.entry.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let nested = e.request.as_ref().is_some_and(|r| r.url == "/");
                    match (&e.resource, nested) {
                        (Some(inner), true) => {
                            out.push_str(r#"{"response":{"status":"200 OK"},"resource":{"resourceType":"Bundle","type":"transaction-response","entry":["#);
                            created(&mut out, inner.entry.len());
                            out.push_str("]}}");
                        }
                        _ => created(&mut out, 1),
                    }
                }
            }
            out.push_str("]}");
            let mut response = (StatusCode::OK, out).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/fhir+json"),
            );
            response
        }
        Err(e) => error_response(&FhirError::new(
            400,
            "invalid",
            format!("the body is not a Bundle: {e}"),
        )),
    }
}

/// `Prefer: respond-async` (exactly that), honoured in Medplum mode only.
fn wants_async(shared: &Shared, headers: &HeaderMap) -> bool {
    shared.config.medplum.is_some()
        && headers
            .get("prefer")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "respond-async")
}

async fn bundle(State(shared): Shared_, headers: HeaderMap, body: Bytes) -> Response {
    let respond_async = wants_async(&shared, &headers);
    let limit = shared.body_limit(respond_async);
    guarded(&shared, &headers, body.len(), limit, async {
        if shared.config.mode == Mode::Sink {
            return sink(&body);
        }
        if respond_async {
            return start_job(&shared, &body);
        }
        let bundle = match parse_body(&body) {
            Ok(b) => b,
            Err(e) => return error_response(&e),
        };
        match process_bundle(&shared, &bundle, OnQuota::Refuse).await {
            Ok(_)
                if {
                    let rate = shared.config.faults.rate_bad_answer;
                    rate > 0.0 && shared.roll() < rate
                } =>
            {
                // written, and answered with a page nobody can read
                shared.stats.faults.fetch_add(1, Ordering::Relaxed);
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, HeaderValue::from_static("text/html"))],
                    "<html><body>Gateway says hello</body></html>",
                )
                    .into_response()
            }
            Ok(response) => fhir_json(StatusCode::OK, &response),
            Err(e) => error_response(&e),
        }
    })
    .await
}

fn next_job_id(shared: &Shared) -> String {
    let n = shared.next_job.fetch_add(1, Ordering::Relaxed) + 1;
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn set_job(shared: &Shared, id: &str, job: Value) {
    shared
        .jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.to_owned(), job);
}

/// `POST {base}` with `Prefer: respond-async`: 202 and a job that runs the
/// batch, waiting for the quota instead of answering 429.
fn start_job(shared: &Arc<Shared>, body: &Bytes) -> Response {
    let parsed = parse_body(body);
    if let Ok(b) = &parsed
        && b["type"] == "transaction"
        && shared
            .config
            .medplum
            .as_ref()
            .is_some_and(|m| m.transaction_bundles)
    {
        return error_response(&FhirError::new(
            400,
            "not-supported",
            "Async transactions are not supported in a project with transaction-bundles",
        ));
    }
    let id = next_job_id(shared);
    let job = json!({
        "resourceType": "AsyncJob",
        "id": id,
        "status": "accepted",
        "request": format!("http://{}/fhir/R4", shared.addr),
        "requestTime": crate::time::now_instant(),
    });
    set_job(shared, &id, job.clone());
    let task_shared = shared.clone();
    let job_id = id.clone();
    tokio::spawn(async move {
        let shared = task_shared;
        let outcome = match parsed {
            Ok(b) if b["type"] == "batch" || b["type"] == "transaction" => {
                process_bundle(&shared, &b, OnQuota::Wait).await
            }
            Ok(_) => Err(FhirError::new(
                400,
                "invalid",
                "an async request to the base takes a batch Bundle",
            )),
            Err(e) => Err(e),
        };
        let mut done = job;
        match outcome {
            Ok(response) => {
                let binary = next_job_id(&shared);
                shared
                    .binaries
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(binary.clone(), response);
                done["status"] = json!("completed");
                done["output"] = json!({ "resourceType": "Parameters", "parameter": [
                    { "name": "results", "valueReference": { "reference": format!("Binary/{binary}") } }
                ]});
            }
            Err(e) => {
                done["status"] = json!("error");
                done["output"] = json!({ "resourceType": "Parameters", "parameter": [
                    { "name": "error", "valueString": e.message }
                ]});
            }
        }
        set_job(&shared, &job_id, done);
    });
    let mut r = fhir_json(
        StatusCode::ACCEPTED,
        &json!({
            "resourceType": "OperationOutcome",
            "issue": [{ "severity": "information", "code": "informational", "details": { "text": "Accepted" } }]
        }),
    );
    let location = format!("http://{}/fhir/R4/job/{id}/status", shared.addr);
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    r
}

/// `GET {base}/job/{id}/status`: 202 while the job runs, then 200 with the AsyncJob.
async fn job_status(
    State(shared): Shared_,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    guarded(&shared, &headers, 0, None, async {
        let job = shared
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        match job {
            Some(job) if job["status"] == "accepted" => fhir_json(StatusCode::ACCEPTED, &job),
            Some(job) => fhir_json(StatusCode::OK, &job),
            None => error_response(&FhirError::new(
                404,
                "not-found",
                format!("job {id} is not known"),
            )),
        }
    })
    .await
}

fn write_response(result: Result<WriteResult, FhirError>, store: &Store) -> Response {
    match result {
        Ok(w) => {
            let status = if w.written == Written::Created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let resource = store
                .get(&w.resource_type, &w.id)
                .map(|s| s.resource.clone())
                .unwrap_or(Value::Null);
            let mut r = fhir_json(status, &resource);
            let location = format!("{}/{}/_history/{}", w.resource_type, w.id, w.version);
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            if let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", w.version)) {
                r.headers_mut().insert(header::ETAG, v);
            }
            r
        }
        Err(e) => error_response(&e),
    }
}

async fn plain_write(shared: &Shared, write: Write, body: &Bytes) -> Response {
    if !shared.charge(1) {
        return error_response(&throttled());
    }
    let resource = match parse_body(body) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    if let Some(e) = outside_transaction(shared, &resource) {
        return error_response(&e);
    }
    let work = Work::write(matches!(write, Write::Conditional { .. }), &resource);
    let _busy = busy(shared, work).await;
    if let Some(e) = conflict(shared, work.conditional) {
        return error_response(&e);
    }
    let mut store = lock(shared);
    let display = shared.config.medplum.is_some();
    let result = single_write(&mut store, &write, resource, display);
    write_response(result, &store)
}

async fn create(
    State(shared): Shared_,
    Path(resource_type): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let limit = shared.body_limit(false);
    guarded(&shared, &headers, body.len(), limit, async {
        plain_write(&shared, Write::Create { resource_type }, &body).await
    })
    .await
}

async fn conditional_update(
    State(shared): Shared_,
    Path(resource_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = query.unwrap_or_default();
    let limit = shared.body_limit(false);
    guarded(&shared, &headers, body.len(), limit, async {
        let write = Write::Conditional {
            resource_type,
            query,
        };
        plain_write(&shared, write, &body).await
    })
    .await
}

async fn update(
    State(shared): Shared_,
    Path((resource_type, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let limit = shared.body_limit(false);
    guarded(&shared, &headers, body.len(), limit, async {
        let write = Write::ById {
            resource_type,
            id,
            if_match,
        };
        plain_write(&shared, write, &body).await
    })
    .await
}

async fn read(
    State(shared): Shared_,
    Path((resource_type, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    guarded(&shared, &headers, 0, None, async {
        if resource_type == "Binary" {
            let binaries = shared.binaries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(bundle) = binaries.get(&id) {
                // as Medplum: read as FHIR JSON, a Binary is its metadata
                // only; its content comes with any other Accept
                let as_resource = headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains("fhir+json"));
                if as_resource {
                    return fhir_json(
                        StatusCode::OK,
                        &json!({
                            "resourceType": "Binary",
                            "id": id,
                            "contentType": "application/fhir+json",
                        }),
                    );
                }
                return fhir_json(StatusCode::OK, bundle);
            }
        }
        let store = lock(&shared);
        match store.get(&resource_type, &id) {
            Some(stored) => fhir_json(StatusCode::OK, &stored.resource),
            None => error_response(&FhirError::new(
                404,
                "not-found",
                format!("{resource_type}/{id} is not known"),
            )),
        }
    })
    .await
}

async fn search(
    State(shared): Shared_,
    Path(resource_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    guarded(&shared, &headers, 0, None, async {
        run_search(&shared, &resource_type, &query.unwrap_or_default()).await
    })
    .await
}

/// `POST Type/_search`: the parameters form-encoded in the body (and any in the URL).
async fn post_search(
    State(shared): Shared_,
    Path(resource_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let limit = shared.body_limit(false);
    guarded(&shared, &headers, body.len(), limit, async {
        let form = crate::query::form_to_query(&String::from_utf8_lossy(&body));
        let merged = [query.unwrap_or_default(), form]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("&");
        run_search(&shared, &resource_type, &merged).await
    })
    .await
}

/// Default and largest page sizes.
const DEFAULT_COUNT: usize = 20;
const MAX_COUNT: usize = 1000;

/// A search: a page of `_count` matches (in id order) from `_offset`, with
/// `total` and `self` / `next` links.
async fn run_search(shared: &Shared, resource_type: &str, query: &str) -> Response {
    shared.stats.searches.fetch_add(1, Ordering::Relaxed);
    let faults = &shared.config.faults;
    if faults.rate_bad_search > 0.0 && shared.roll() < faults.rate_bad_search {
        shared.stats.faults.fetch_add(1, Ordering::Relaxed);
        let (content_type, body) = match faults.bad_search {
            crate::BadSearch::Empty => ("application/fhir+json", String::new()),
            crate::BadSearch::Html => (
                "text/html",
                "<html><body><form>Sign in to the proxy</form></body></html>".to_owned(),
            ),
            crate::BadSearch::NotSearchset => (
                "application/fhir+json",
                r#"{"resourceType":"OperationOutcome","issue":[]}"#.to_owned(),
            ),
        };
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response();
    }
    let search = parse_search(query);
    if !search.unsupported.is_empty() {
        return error_response(&FhirError::new(
            400,
            "not-supported",
            format!(
                "the sandbox searches by identifier and _id only, not {:?}",
                search.unsupported
            ),
        ));
    }
    let _busy = busy(shared, Work::search()).await;
    let store = lock(shared);
    let ids = if search.identifiers.is_empty() && search.ids.is_empty() {
        let mut all: Vec<String> = store
            .resources(resource_type)
            .iter()
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect();
        all.sort();
        all
    } else {
        store.search(resource_type, &search)
    };
    let total = ids.len();
    let mut bundle = json!({ "resourceType": "Bundle", "type": "searchset", "total": total });
    if !search.summary_count {
        let count = search.count.unwrap_or(DEFAULT_COUNT).min(MAX_COUNT);
        let offset = search.offset.unwrap_or(0);
        let entries: Vec<Value> = ids
            .iter()
            .skip(offset)
            .take(count)
            .filter_map(|id| store.get(resource_type, id))
            .map(|stored| {
                json!({
                    "fullUrl": format!("{resource_type}/{}", stored.resource["id"].as_str().unwrap_or("")),
                    "resource": stored.resource,
                    "search": { "mode": "match" },
                })
            })
            .collect();
        let rest = crate::query::without(query, &["_count", "_offset"]);
        let page = |offset: usize| {
            let sep = if rest.is_empty() { "" } else { "&" };
            format!(
                "http://{}/fhir/R4/{resource_type}?{rest}{sep}_count={count}&_offset={offset}",
                shared.addr
            )
        };
        let mut links = vec![json!({ "relation": "self", "url": page(offset) })];
        if count > 0 && offset.saturating_add(count) < total {
            links.push(json!({ "relation": "next", "url": page(offset + count) }));
        }
        bundle["link"] = Value::Array(links);
        bundle["entry"] = Value::Array(entries);
    }
    fhir_json(StatusCode::OK, &bundle)
}
