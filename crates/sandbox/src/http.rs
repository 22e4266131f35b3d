//! The sandbox's HTTP side: routes, fault injection, bundles.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::query::parse_search;
use crate::store::{FhirError, Store, WriteResult, Written};
use crate::{Mode, Shared};

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
        .route(
            "/fhir/R4/{resource_type}",
            get(search).post(create).put(conditional_update),
        )
        .route("/fhir/R4/{resource_type}/{id}", get(read).put(update))
        .layer(DefaultBodyLimit::max(256 * 1024 * 1024))
        .with_state(shared)
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

/// Applies the configured faults around `handle`.
async fn guarded(
    shared: &Shared,
    headers: &HeaderMap,
    body_len: usize,
    handle: impl FnOnce() -> Response,
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
            drop(handle());
        }
        return reset();
    }
    if let Some(max) = shared.config.limits.max_body_bytes
        && body_len > max
    {
        return error_response(&FhirError::new(400, "invalid", "File too large"));
    }
    let mut response = handle();
    if let Some(value) = shared
        .ratelimit()
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        response.headers_mut().insert("ratelimit", value);
    }
    response
}

fn throttled() -> FhirError {
    FhirError::new(
        429,
        "throttled",
        "Too many requests: the quota of FHIR interactions is used up",
    )
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
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
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

async fn metadata() -> Response {
    fhir_json(
        StatusCode::OK,
        &json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "software": { "name": "fhirlift-sandbox", "version": env!("CARGO_PKG_VERSION") },
            "rest": [{
                "mode": "server",
                "interaction": [{ "code": "batch" }, { "code": "transaction" }],
            }],
        }),
    )
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Store> {
    shared.store.lock().unwrap_or_else(|p| p.into_inner())
}

fn status_line(status: u16) -> String {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("{status} {reason}")
}

fn written_entry(w: &WriteResult) -> Value {
    let status = if w.written == Written::Created {
        201
    } else {
        200
    };
    json!({
        "response": {
            "status": status_line(status),
            "location": format!("{}/{}/_history/{}", w.resource_type, w.id, w.version),
            "etag": format!("W/\"{}\"", w.version),
            "lastModified": w.last_updated,
        }
    })
}

fn error_entry(e: &FhirError) -> Value {
    json!({ "response": { "status": status_line(e.status), "outcome": e.outcome() } })
}

fn parse_body(body: &Bytes) -> Result<Value, FhirError> {
    serde_json::from_slice(body)
        .map_err(|e| FhirError::new(400, "invalid", format!("the body is not JSON: {e}")))
}

/// A write in a bundle entry, or from a plain request.
enum Write {
    /// `PUT Type?identifier=…`
    Conditional {
        resource_type: String,
        query: String,
    },
    /// `PUT Type/id`, optionally with `If-Match`.
    ById {
        resource_type: String,
        id: String,
        if_match: Option<String>,
    },
    /// `POST Type`
    Create { resource_type: String },
}

fn entry_write(entry: &Value) -> Result<Write, FhirError> {
    let request = &entry["request"];
    let method = request["method"].as_str().unwrap_or("");
    let url = request["url"].as_str().unwrap_or("");
    let url = url.trim_start_matches('/');
    let if_match = request["ifMatch"].as_str().map(str::to_owned);
    match (method, url.split_once('?'), url.split_once('/')) {
        ("PUT", Some((t, q)), _) => Ok(Write::Conditional {
            resource_type: t.to_owned(),
            query: q.to_owned(),
        }),
        ("PUT", None, Some((t, id))) => Ok(Write::ById {
            resource_type: t.to_owned(),
            id: id.to_owned(),
            if_match,
        }),
        ("POST", None, None) if !url.is_empty() => Ok(Write::Create {
            resource_type: url.to_owned(),
        }),
        _ => Err(FhirError::new(
            400,
            "not-supported",
            format!("the sandbox does not support {method} {url:?} in a bundle"),
        )),
    }
}

/// The id a write targets: existing, or new.
fn target_id(store: &mut Store, write: &Write) -> Result<(String, String), FhirError> {
    match write {
        Write::Conditional {
            resource_type,
            query,
        } => {
            let search = parse_search(query);
            let id = match store.resolve_conditional(resource_type, &search)? {
                Some(id) => id,
                None => store.new_id(),
            };
            Ok((resource_type.clone(), id))
        }
        Write::ById {
            resource_type,
            id,
            if_match,
        } => {
            let Some(stored) = store.get(resource_type, id) else {
                return Err(FhirError::new(
                    400,
                    "invalid",
                    format!(
                        "{resource_type}/{id} does not exist; the server assigns ids (create with POST or a conditional PUT)"
                    ),
                ));
            };
            if let Some(expected) = if_match {
                let wanted = expected.trim_start_matches("W/").trim_matches('"');
                if wanted != stored.version.to_string() {
                    return Err(FhirError::new(412, "conflict", "Precondition Failed"));
                }
            }
            Ok((resource_type.clone(), id.clone()))
        }
        Write::Create { resource_type } => Ok((resource_type.clone(), store.new_id())),
    }
}

fn check_body_id(write: &Write, resource: &Value, exists: bool) -> Result<(), FhirError> {
    if matches!(write, Write::Conditional { .. }) && !exists && resource.get("id").is_some() {
        return Err(FhirError::new(
            400,
            "invalid",
            "Cannot perform create as update with client-assigned ID",
        ));
    }
    Ok(())
}

/// One write on its own (a batch entry, or a plain request).
fn single_write(
    store: &mut Store,
    write: &Write,
    mut resource: Value,
) -> Result<WriteResult, FhirError> {
    let (resource_type, id) = target_id(store, write)?;
    let exists = store.get(&resource_type, &id).is_some();
    check_body_id(write, &resource, exists)?;
    store.resolve_references(&mut resource, &HashMap::new())?;
    store.write(&resource_type, &id, resource, None)
}

/// A transaction: all or nothing.
fn transaction(shared: &Shared, bundle: &Value) -> Result<Value, FhirError> {
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    if let Some(max) = shared.config.limits.max_transaction_entries
        && entries.len() > max
    {
        return Err(FhirError::new(
            400,
            "invalid",
            format!(
                "Transaction contains {} entries; at most {max} are allowed",
                entries.len()
            ),
        ));
    }
    let mut store = lock(shared);
    let mut local = HashMap::new();
    let mut planned = Vec::with_capacity(entries.len());
    let mut seen = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let write = entry_write(entry).map_err(|e| at_entry(i, e))?;
        let (resource_type, id) = target_id(&mut store, &write).map_err(|e| at_entry(i, e))?;
        if let Some(first) = seen.insert(format!("{resource_type}/{id}"), i) {
            return Err(at_entry(
                i,
                FhirError::new(
                    400,
                    "invalid",
                    format!("entries {first} and {i} write the same resource"),
                ),
            ));
        }
        if let Some(full_url) = entry["fullUrl"].as_str() {
            local.insert(full_url.to_owned(), format!("{resource_type}/{id}"));
        }
        planned.push((write, resource_type, id));
    }
    let mut undo = Vec::new();
    let mut responses = Vec::with_capacity(entries.len());
    for (i, ((write, resource_type, id), entry)) in planned.iter().zip(&entries).enumerate() {
        let result = (|| {
            let mut resource = entry["resource"].clone();
            let exists = store.get(resource_type, id).is_some();
            check_body_id(write, &resource, exists)?;
            store.resolve_references(&mut resource, &local)?;
            store.write(resource_type, id, resource, Some(&mut undo))
        })();
        match result {
            Ok(w) => responses.push(written_entry(&w)),
            Err(e) => {
                store.roll_back(undo);
                return Err(at_entry(i, e));
            }
        }
    }
    Ok(json!({ "resourceType": "Bundle", "type": "transaction-response", "entry": responses }))
}

fn at_entry(index: usize, e: FhirError) -> FhirError {
    FhirError {
        message: format!("entry {index}: {}", e.message),
        ..e
    }
}

fn batch_entry(shared: &Shared, entry: &Value) -> Value {
    shared.stats.entries.fetch_add(1, Ordering::Relaxed);
    let request = &entry["request"];
    if request["method"] == "POST" && matches!(request["url"].as_str(), Some("/")) {
        return match transaction(shared, &entry["resource"]) {
            Ok(response) => {
                json!({ "response": { "status": status_line(200) }, "resource": response })
            }
            Err(e) => error_entry(&e),
        };
    }
    let faults = &shared.config.faults;
    if faults.rate_409 > 0.0 && shared.roll() < faults.rate_409 {
        shared.stats.faults.fetch_add(1, Ordering::Relaxed);
        return error_entry(&FhirError::new(
            409,
            "conflict",
            "sandbox fault: could not serialize access due to read/write dependencies among transactions",
        ));
    }
    let result = entry_write(entry).and_then(|write| {
        let mut store = lock(shared);
        single_write(&mut store, &write, entry["resource"].clone())
    });
    match result {
        Ok(w) => written_entry(&w),
        Err(e) => error_entry(&e),
    }
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

async fn bundle(State(shared): Shared_, headers: HeaderMap, body: Bytes) -> Response {
    let s = shared.clone();
    guarded(&shared, &headers, body.len(), move || {
        if s.config.mode == Mode::Sink {
            return sink(&body);
        }
        let bundle = match parse_body(&body) {
            Ok(b) if b["resourceType"] == "Bundle" => b,
            Ok(_) => return error_response(&FhirError::new(400, "invalid", "POST to the base takes a Bundle")),
            Err(e) => return error_response(&e),
        };
        match bundle["type"].as_str() {
            Some("batch") => {
                let entries = bundle["entry"].as_array().map(Vec::as_slice).unwrap_or_default();
                if let Some(max) = s.config.limits.max_batch_entries
                    && entries.len() > max
                {
                    return error_response(&FhirError::new(
                        400,
                        "invalid",
                        format!("Batch contains {} entries; at most {max} are allowed", entries.len()),
                    ));
                }
                // past the quota, this entry and every one after it get 429
                let mut exhausted = false;
                let responses: Vec<Value> = entries
                    .iter()
                    .map(|e| {
                        let writes = e["resource"]["entry"].as_array().map_or(1, Vec::len) as u64;
                        exhausted = exhausted || !s.charge(writes);
                        if exhausted {
                            s.stats.entries.fetch_add(1, Ordering::Relaxed);
                            error_entry(&throttled())
                        } else {
                            batch_entry(&s, e)
                        }
                    })
                    .collect();
                fhir_json(
                    StatusCode::OK,
                    &json!({ "resourceType": "Bundle", "type": "batch-response", "entry": responses }),
                )
            }
            Some("transaction") if !s.charge(bundle["entry"].as_array().map_or(0, Vec::len) as u64) => {
                error_response(&throttled())
            }
            Some("transaction") => match transaction(&s, &bundle) {
                Ok(response) => fhir_json(StatusCode::OK, &response),
                Err(e) => error_response(&e),
            },
            other => error_response(&FhirError::new(
                400,
                "not-supported",
                format!("bundle type {other:?}: only batch and transaction"),
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

fn plain_write(shared: &Shared, write: Write, body: &Bytes) -> Response {
    if !shared.charge(1) {
        return error_response(&throttled());
    }
    let resource = match parse_body(body) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let mut store = lock(shared);
    let result = single_write(&mut store, &write, resource);
    write_response(result, &store)
}

async fn create(
    State(shared): Shared_,
    Path(resource_type): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let s = shared.clone();
    guarded(&shared, &headers, body.len(), move || {
        plain_write(&s, Write::Create { resource_type }, &body)
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
    let s = shared.clone();
    let query = query.unwrap_or_default();
    guarded(&shared, &headers, body.len(), move || {
        plain_write(
            &s,
            Write::Conditional {
                resource_type,
                query,
            },
            &body,
        )
    })
    .await
}

async fn update(
    State(shared): Shared_,
    Path((resource_type, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let s = shared.clone();
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    guarded(&shared, &headers, body.len(), move || {
        plain_write(
            &s,
            Write::ById {
                resource_type,
                id,
                if_match,
            },
            &body,
        )
    })
    .await
}

async fn read(
    State(shared): Shared_,
    Path((resource_type, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let s = shared.clone();
    guarded(&shared, &headers, 0, move || {
        let store = lock(&s);
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
    let s = shared.clone();
    guarded(&shared, &headers, 0, move || {
        let search = parse_search(&query.unwrap_or_default());
        if !search.unsupported.is_empty() {
            return error_response(&FhirError::new(
                400,
                "not-supported",
                format!("the sandbox searches by identifier only, not {:?}", search.unsupported),
            ));
        }
        let store = lock(&s);
        let ids = if search.identifiers.is_empty() {
            let mut all: Vec<String> = store
                .resources(&resource_type)
                .iter()
                .filter_map(|r| r["id"].as_str().map(str::to_owned))
                .collect();
            all.sort();
            all
        } else {
            store.search(&resource_type, &search)
        };
        let mut bundle = json!({ "resourceType": "Bundle", "type": "searchset", "total": ids.len() });
        if !search.summary_count {
            let entries: Vec<Value> = ids
                .iter()
                .take(search.count.unwrap_or(usize::MAX))
                .filter_map(|id| store.get(&resource_type, id))
                .map(|stored| json!({ "fullUrl": format!("{resource_type}/{}", stored.resource["id"].as_str().unwrap_or("")), "resource": stored.resource }))
                .collect();
            bundle["entry"] = Value::Array(entries);
        }
        fhir_json(StatusCode::OK, &bundle)
    })
    .await
}
