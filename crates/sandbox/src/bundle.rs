//! Writes and bundles: single writes, batches, transactions, and the
//! Medplum behaviour around them (bucketed batches, non-atomic or limited
//! transactions, serialization conflicts, server work on a few workers).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::query::parse_search;
use crate::store::{FhirError, Store, WriteResult, Written};
use crate::{OnQuota, Shared};

pub(crate) fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Store> {
    shared.store.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn throttled() -> FhirError {
    FhirError::new(
        429,
        "throttled",
        "Too many requests: the quota of FHIR interactions is used up",
    )
}

fn conflict_error() -> FhirError {
    FhirError::new(
        409,
        "conflict",
        "could not serialize access due to read/write dependencies among transactions",
    )
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

fn nested_entry(response: Value) -> Value {
    json!({ "response": { "status": status_line(200) }, "resource": response })
}

fn response_bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({ "resourceType": "Bundle", "type": kind, "entry": entries })
}

/// A write in a bundle entry, or from a plain request.
pub(crate) enum Write {
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

/// An entry `POST /`: a transaction nested in a batch.
fn is_nested(entry: &Value) -> bool {
    entry["request"]["method"] == "POST" && entry["request"]["url"] == "/"
}

/// An entry that writes conditionally: a URL with `?` (conditional PUT).
fn is_conditional_url(entry: &Value) -> bool {
    entry["request"]["url"]
        .as_str()
        .is_some_and(|u| u.contains('?'))
}

/// The conditional references (`Type?…`) in a resource.
fn conditional_references(value: &Value) -> u64 {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(key, v)| match v {
                Value::String(r) if key == "reference" => {
                    u64::from(r.contains('?') && !r.starts_with("urn:"))
                }
                other => conditional_references(other),
            })
            .sum(),
        Value::Array(items) => items.iter().map(conditional_references).sum(),
        _ => 0,
    }
}

/// The refusal of a conditional reference outside a transaction, when the
/// sandbox is set to resolve them only there.
pub(crate) fn outside_transaction(shared: &Shared, resource: &Value) -> Option<FhirError> {
    (shared
        .config
        .limits
        .conditional_references_in_transactions_only
        && shared.config.medplum.is_none()
        && conditional_references(resource) > 0)
        .then(|| {
            FhirError::new(
                400,
                "not-supported",
                "conditional references are resolved only inside transactions",
            )
        })
}

/// A conditional write entry (a conditional PUT, or one holding a
/// conditional reference): it may meet a serialization conflict.
fn is_conditional(entry: &Value) -> bool {
    is_conditional_url(entry) || conditional_references(&entry["resource"]) > 0
}

/// The writes a batch entry makes (a nested transaction: its entries).
fn entry_writes(entry: &Value) -> u64 {
    if is_nested(entry) {
        entry["resource"]["entry"].as_array().map_or(0, Vec::len) as u64
    } else {
        1
    }
}

/// The server work of a request, counted before it runs.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Work {
    pub writes: u64,
    pub searches: u64,
    /// It holds conditional writes (it takes part in conflicts).
    pub conditional: bool,
}

impl Work {
    /// One write, as a plain request makes it.
    pub fn write(conditional_url: bool, resource: &Value) -> Work {
        let searches = u64::from(conditional_url) + conditional_references(resource);
        Work {
            writes: 1,
            searches,
            conditional: searches > 0,
        }
    }

    /// One search request (one page).
    pub fn search() -> Work {
        Work {
            searches: 1,
            ..Work::default()
        }
    }

    /// Every entry of a bundle, nested transactions' entries included.
    fn entries(entries: &[Value]) -> Work {
        let mut work = Work::default();
        for entry in entries {
            if is_nested(entry) {
                let inner = entry["resource"]["entry"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                work = work.plus(Work::entries(inner));
            } else {
                work = work.plus(Work::write(is_conditional_url(entry), &entry["resource"]));
            }
        }
        work
    }

    fn plus(self, other: Work) -> Work {
        Work {
            writes: self.writes.saturating_add(other.writes),
            searches: self.searches.saturating_add(other.searches),
            conditional: self.conditional || other.conditional,
        }
    }
}

/// A request at work in Medplum mode: it holds a worker and, when it holds
/// conditional writes, counts as in flight for conflicts until dropped.
pub(crate) struct Busy<'a> {
    shared: &'a Shared,
    registered: bool,
    _permit: Option<tokio::sync::SemaphorePermit<'a>>,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if self.registered {
            self.shared
                .conditional_in_flight
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// In Medplum mode: counts the request in flight (if it holds conditional
/// writes), waits for a worker, and spends the work's server time on it.
/// Elsewhere: nothing.
pub(crate) async fn busy<'a>(shared: &'a Shared, work: Work) -> Busy<'a> {
    let mut busy = Busy {
        shared,
        registered: false,
        _permit: None,
    };
    let Some(m) = &shared.config.medplum else {
        return busy;
    };
    if work.conditional {
        shared.conditional_in_flight.fetch_add(1, Ordering::Relaxed);
        busy.registered = true;
    }
    busy._permit = shared.workers.acquire().await.ok();
    let times = |d: Duration, n: u64| d.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
    let cost = times(m.write_cost, work.writes).saturating_add(times(m.search_cost, work.searches));
    if !cost.is_zero() {
        tokio::time::sleep(cost).await;
    }
    busy
}

/// In Medplum mode, for a conditional write: a 409 by the dice, more likely
/// the more other requests with conditional writes are in flight.
pub(crate) fn conflict(shared: &Shared, conditional: bool) -> Option<FhirError> {
    let m = shared.config.medplum.as_ref()?;
    if !conditional || m.conflict_rate.is_nan() || m.conflict_rate <= 0.0 {
        return None;
    }
    let others = shared
        .conditional_in_flight
        .load(Ordering::Relaxed)
        .saturating_sub(1);
    if others == 0 {
        return None;
    }
    let chance = (m.conflict_rate * others as f64).min(0.9);
    if shared.roll() < chance {
        shared.stats.conflicts.fetch_add(1, Ordering::Relaxed);
        return Some(conflict_error());
    }
    None
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
pub(crate) fn single_write(
    store: &mut Store,
    write: &Write,
    mut resource: Value,
    display: bool,
) -> Result<WriteResult, FhirError> {
    let (resource_type, id) = target_id(store, write)?;
    let exists = store.get(&resource_type, &id).is_some();
    check_body_id(write, &resource, exists)?;
    store.resolve_references(&mut resource, &HashMap::new(), display)?;
    store.write(&resource_type, &id, resource, None)
}

fn at_entry(index: usize, e: FhirError) -> FhirError {
    FhirError {
        message: format!("entry {index}: {}", e.message),
        ..e
    }
}

/// The limits on a transaction's size: the sandbox's own, and Medplum's
/// with `transaction-bundles`.
fn transaction_limits(shared: &Shared, entries: &[Value]) -> Result<(), FhirError> {
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
    if shared
        .config
        .medplum
        .as_ref()
        .is_some_and(|m| m.transaction_bundles)
    {
        if entries.len() > 8 && entries.iter().any(is_conditional_url) {
            return Err(FhirError::new(
                400,
                "invalid",
                "Transaction requires strict isolation but has too many entries",
            ));
        }
        if entries
            .iter()
            .filter(|e| e["request"]["method"] == "PUT")
            .count()
            > 50
        {
            return Err(FhirError::new(
                400,
                "invalid",
                "Transaction contains more update operations than allowed",
            ));
        }
    }
    Ok(())
}

/// A transaction: all or nothing.
fn transaction(shared: &Shared, bundle: &Value) -> Result<Value, FhirError> {
    let entries = bundle["entry"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    transaction_limits(shared, entries)?;
    for (i, entry) in entries.iter().enumerate() {
        if let Some(e) = conflict(shared, is_conditional(entry)) {
            return Err(at_entry(i, e));
        }
    }
    let display = shared.config.medplum.is_some();
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
    for (i, ((write, resource_type, id), entry)) in planned.iter().zip(entries).enumerate() {
        let result = (|| {
            let mut resource = entry["resource"].clone();
            let exists = store.get(resource_type, id).is_some();
            check_body_id(write, &resource, exists)?;
            store.resolve_references(&mut resource, &local, display)?;
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
    Ok(response_bundle("transaction-response", responses))
}

/// A batch entry in generic mode: run where it stands in the bundle.
fn batch_entry(shared: &Shared, entry: &Value) -> Value {
    shared.stats.entries.fetch_add(1, Ordering::Relaxed);
    if is_nested(entry) {
        return match transaction(shared, &entry["resource"]) {
            Ok(response) => nested_entry(response),
            Err(e) => error_entry(&e),
        };
    }
    if let Some(e) = fault_409(shared) {
        return error_entry(&e);
    }
    if let Some(e) = outside_transaction(shared, &entry["resource"]) {
        return error_entry(&e);
    }
    let result = entry_write(entry).and_then(|write| {
        let mut store = lock(shared);
        fault_412(shared, &mut store, &write);
        single_write(&mut store, &write, entry["resource"].clone(), false)
    });
    match result {
        Ok(w) => written_entry(&w),
        Err(e) => error_entry(&e),
    }
}

/// The concurrent writer of [`crate::Faults::rate_412`]: moves the target
/// of an update by id with `If-Match` to a new version first.
fn fault_412(shared: &Shared, store: &mut Store, write: &Write) {
    let rate = shared.config.faults.rate_412;
    if let Write::ById {
        resource_type,
        id,
        if_match: Some(_),
    } = write
        && rate > 0.0
        && shared.roll() < rate
    {
        shared.stats.faults.fetch_add(1, Ordering::Relaxed);
        store.touch(resource_type, id);
    }
}

/// The injected 409 of [`crate::Faults::rate_409`].
fn fault_409(shared: &Shared) -> Option<FhirError> {
    let faults = &shared.config.faults;
    if faults.rate_409 > 0.0 && shared.roll() < faults.rate_409 {
        shared.stats.faults.fetch_add(1, Ordering::Relaxed);
        return Some(FhirError::new(
            409,
            "conflict",
            "sandbox fault: could not serialize access due to read/write dependencies among transactions",
        ));
    }
    None
}

/// A batch or transaction entry as Medplum plans it before running any:
/// ids assigned up front (so `urn:uuid` references can be rewritten).
enum Plan {
    /// `POST /`: a nested transaction.
    Nested,
    Write {
        write: Write,
        /// The id assigned up front (none when a conditional write could
        /// not be resolved: running it again reports why).
        id: Option<String>,
        /// A conditional write that matched a resource up front.
        existed: bool,
    },
    Invalid(FhirError),
}

/// Medplum's processing buckets: transactions, deletes, creates, updates, the rest.
fn bucket(entry: &Value) -> u8 {
    match entry["request"]["method"].as_str() {
        Some("POST") if is_nested(entry) => 0,
        Some("DELETE") => 1,
        Some("POST") => 2,
        Some("PUT") => 3,
        Some("PATCH") => 4,
        _ => 5,
    }
}

/// A conditional write's query, the same however it was spelled.
fn query_key(resource_type: &str, query: &str) -> String {
    let search = parse_search(query);
    let mut tokens: Vec<(Option<String>, String)> = search
        .identifiers
        .into_iter()
        .map(|t| (t.system, t.value))
        .collect();
    tokens.sort();
    format!("{resource_type}?{tokens:?}")
}

fn plan(store: &mut Store, entries: &[Value], transaction: bool) -> Vec<Plan> {
    entries
        .iter()
        .map(|entry| {
            if is_nested(entry) && !transaction {
                return Plan::Nested;
            }
            let write = match entry_write(entry) {
                Ok(w) => w,
                Err(e) => return Plan::Invalid(e),
            };
            let (id, existed) = match &write {
                Write::Conditional {
                    resource_type,
                    query,
                } => match store.resolve_conditional(resource_type, &parse_search(query)) {
                    Ok(Some(id)) => (Some(id), true),
                    Ok(None) => (Some(store.new_id()), false),
                    Err(_) => (None, false),
                },
                Write::ById { id, .. } => (Some(id.clone()), true),
                Write::Create { .. } => (Some(store.new_id()), false),
            };
            Plan::Write { write, id, existed }
        })
        .collect()
}

/// Runs one planned write, as Medplum does when its bucket comes.
fn run_planned(
    store: &mut Store,
    write: &Write,
    planned: Option<&String>,
    existed: bool,
    mut resource: Value,
    local: &HashMap<String, String>,
    created: &mut HashMap<String, String>,
) -> Result<WriteResult, FhirError> {
    let (resource_type, id, key) = match write {
        Write::Conditional {
            resource_type,
            query,
        } => {
            let key = query_key(resource_type, query);
            let id = match store.resolve_conditional(resource_type, &parse_search(query))? {
                Some(now) if !existed && created.get(&key) == Some(&now) => {
                    return Err(FhirError::new(
                        400,
                        "invalid",
                        "Resource ID did not match resolved ID",
                    ));
                }
                Some(now) => now,
                None => planned.cloned().unwrap_or_else(|| store.new_id()),
            };
            (resource_type.clone(), id, Some(key))
        }
        Write::ById { .. } => {
            let (resource_type, id) = target_id(store, write)?;
            (resource_type, id, None)
        }
        Write::Create { resource_type } => {
            let id = planned.cloned().unwrap_or_else(|| store.new_id());
            (resource_type.clone(), id, None)
        }
    };
    let exists = store.get(&resource_type, &id).is_some();
    check_body_id(write, &resource, exists)?;
    store.resolve_references(&mut resource, local, true)?;
    let result = store.write(&resource_type, &id, resource, None)?;
    if let Some(key) = key
        && result.written == Written::Created
    {
        created.insert(key, id);
    }
    Ok(result)
}

/// Medplum's way with a batch (or with a transaction when the project lacks
/// `transaction-bundles`): ids assigned up front, entries run bucketed
/// (nested transactions, creates, updates), each alone; the answers in the
/// bundle's order. With `on_quota`, each entry is charged to the quota.
async fn run_entries(
    shared: &Shared,
    entries: &[Value],
    transaction: bool,
    on_quota: Option<OnQuota>,
) -> Vec<Value> {
    let (plans, local) = {
        let mut store = lock(shared);
        let plans = plan(&mut store, entries, transaction);
        let mut local = HashMap::new();
        for (entry, plan) in entries.iter().zip(&plans) {
            if let (
                Some(full_url),
                Plan::Write {
                    write,
                    id: Some(id),
                    ..
                },
            ) = (entry["fullUrl"].as_str(), plan)
            {
                let resource_type = match write {
                    Write::Conditional { resource_type, .. }
                    | Write::ById { resource_type, .. }
                    | Write::Create { resource_type } => resource_type,
                };
                local.insert(full_url.to_owned(), format!("{resource_type}/{id}"));
            }
        }
        (plans, local)
    };
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| (bucket(&entries[i]), i));
    let mut responses = vec![Value::Null; entries.len()];
    let mut created = HashMap::new();
    let mut exhausted = false;
    for i in order {
        let entry = &entries[i];
        shared.stats.entries.fetch_add(1, Ordering::Relaxed);
        if let Some(on_quota) = on_quota {
            // past the quota, this entry and every one after it get 429; a
            // nested transaction is charged entry by entry inside
            let charge = if is_nested(entry) {
                0
            } else {
                entry_writes(entry)
            };
            exhausted = exhausted || !shared.charge_or_wait(charge, on_quota).await;
            if exhausted {
                responses[i] = error_entry(&throttled());
                continue;
            }
        }
        responses[i] = match &plans[i] {
            Plan::Invalid(e) => error_entry(e),
            Plan::Nested => match nested(shared, &entry["resource"], on_quota).await {
                Ok(response) => {
                    // the quota ran out inside: nothing after it runs
                    exhausted |= response["entry"].as_array().into_iter().flatten().any(|e| {
                        e["response"]["status"]
                            .as_str()
                            .is_some_and(|s| s.starts_with("429"))
                    });
                    nested_entry(response)
                }
                Err(e) => error_entry(&e),
            },
            Plan::Write { write, id, existed } => {
                let refused = if transaction { None } else { fault_409(shared) };
                let refused = refused.or_else(|| conflict(shared, is_conditional(entry)));
                let result = match refused {
                    Some(e) => Err(e),
                    None => {
                        let mut store = lock(shared);
                        fault_412(shared, &mut store, write);
                        run_planned(
                            &mut store,
                            write,
                            id.as_ref(),
                            *existed,
                            entry["resource"].clone(),
                            &local,
                            &mut created,
                        )
                    }
                };
                match result {
                    Ok(w) => written_entry(&w),
                    Err(e) => error_entry(&e),
                }
            }
        };
    }
    responses
}

fn transaction_bundles(shared: &Shared) -> bool {
    shared
        .config
        .medplum
        .as_ref()
        .is_some_and(|m| m.transaction_bundles)
}

/// A transaction nested in a Medplum-mode batch: atomic with
/// `transaction-bundles`, else run like a batch, its entries charged to
/// the quota one by one (as on Medplum, where a 429 inside leaves it
/// partially written).
async fn nested(
    shared: &Shared,
    bundle: &Value,
    on_quota: Option<OnQuota>,
) -> Result<Value, FhirError> {
    if bundle["resourceType"] != "Bundle" || bundle["type"] != "transaction" {
        return Err(FhirError::new(
            400,
            "invalid",
            "an entry POST / takes a transaction Bundle",
        ));
    }
    if transaction_bundles(shared) {
        return transaction(shared, bundle);
    }
    let entries = bundle["entry"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    transaction_limits(shared, entries)?;
    let responses = Box::pin(run_entries(shared, entries, true, on_quota)).await;
    Ok(response_bundle("transaction-response", responses))
}

/// Runs a batch or transaction bundle: the response bundle, or why the whole
/// bundle was refused.
pub(crate) async fn process_bundle(
    shared: &Shared,
    bundle: &Value,
    on_quota: OnQuota,
) -> Result<Value, FhirError> {
    if bundle["resourceType"] != "Bundle" {
        return Err(FhirError::new(
            400,
            "invalid",
            "POST to the base takes a Bundle",
        ));
    }
    let entries = bundle["entry"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let medplum = shared.config.medplum.is_some();
    match bundle["type"].as_str() {
        Some("batch") => {
            if let Some(max) = shared.config.limits.max_batch_entries
                && entries.len() > max
            {
                return Err(FhirError::new(
                    400,
                    "invalid",
                    format!(
                        "Batch contains {} entries; at most {max} are allowed",
                        entries.len()
                    ),
                ));
            }
            let _busy = busy(shared, Work::entries(entries)).await;
            let responses = if medplum {
                run_entries(shared, entries, false, Some(on_quota)).await
            } else {
                // past the quota, this entry and every one after it get 429
                let mut exhausted = false;
                let mut responses = Vec::with_capacity(entries.len());
                for e in entries {
                    exhausted =
                        exhausted || !shared.charge_or_wait(entry_writes(e), on_quota).await;
                    responses.push(if exhausted {
                        shared.stats.entries.fetch_add(1, Ordering::Relaxed);
                        error_entry(&throttled())
                    } else {
                        batch_entry(shared, e)
                    });
                }
                responses
            };
            Ok(response_bundle("batch-response", responses))
        }
        Some("transaction") if medplum && !transaction_bundles(shared) => {
            transaction_limits(shared, entries)?;
            let _busy = busy(shared, Work::entries(entries)).await;
            let responses = run_entries(shared, entries, true, Some(on_quota)).await;
            Ok(response_bundle("transaction-response", responses))
        }
        Some("transaction") => {
            if !shared.charge_or_wait(entries.len() as u64, on_quota).await {
                return Err(throttled());
            }
            let _busy = busy(shared, Work::entries(entries)).await;
            transaction(shared, bundle)
        }
        other => Err(FhirError::new(
            400,
            "not-supported",
            format!("bundle type {other:?}: only batch and transaction"),
        )),
    }
}
