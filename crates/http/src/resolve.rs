//! The resolve strategy: look identifiers up, then write by id.
//!
//! A planned request holds conditional writes (`PUT Type?identifier=s|v`)
//! and conditional references. Before sending it, the resolver
//!
//! 1. searches every identity the request writes or references and the id
//!    cache does not know, one search per resource type
//!    (`Type?identifier=s|a,s|b,…`, paged; `POST Type/_search` when the
//!    list is too long for a URL);
//! 2. rewrites each write: nothing stored → `POST Type`; one stored →
//!    `PUT Type/id` with `If-Match` on the version read, or no request at
//!    all when the stored content already equals the new content (ignoring
//!    `id`, `meta` and the `display` a server adds to references); two
//!    stored → the record is rejected (fhirlift never picks one);
//! 3. rewrites references to `Type/id` from what it found or created.
//!
//! An identity the ledger places (a changed record whose id and version
//! the ledger holds: [`fhirlift_core::group::Operation::stored`]) skips step 1 on
//! a request's first try and is written by that id (without `If-Match`:
//! the source wins, as it does after a search, and the dispatcher already
//! orders this run's writes to one identity); a refusal sends it again,
//! and a retry searches like any other.
//!
//! Every attempt resolves again, so a retry after an ambiguous failure (a
//! reset after the body was sent) finds what the lost answer created and
//! never blindly repeats a POST. The one shortcut: an identifier system
//! that held no resources when the run first wrote to it (a count search
//! says 0) needs no searches for identities this run has not written. An
//! ambiguous failure turns the shortcut off for its systems.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::client::{Answer, Http};
use crate::quota::Quota;
use crate::reader::{is_searchset, not_a_searchset};
use fhirlift_core::content::{
    amend, conditional_references, held_identities, rewrite_references, same_content,
};
use fhirlift_core::group::{
    Identity, StoredAt, encode_query_part, escape_search_value, parse_conditional_url,
};
use fhirlift_core::planner::{Request, RequestKind};

/// The most ids the cache keeps (about 40 bytes each): past it, references
/// are searched instead of remembered and the empty-system shortcut stops.
const ID_CACHE_CAP: usize = 2_000_000;

/// A server id, compact: most servers (Medplum among them) use UUIDs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CachedId {
    Uuid(u128),
    Text(Box<str>),
}

impl CachedId {
    fn new(id: &str) -> CachedId {
        match parse_uuid(id) {
            Some(u) => CachedId::Uuid(u),
            None => CachedId::Text(id.into()),
        }
    }

    fn to_text(&self) -> String {
        match self {
            CachedId::Text(t) => t.to_string(),
            CachedId::Uuid(u) => {
                let mut out = String::with_capacity(36);
                fhirlift_core::group::write_uuid(*u, &mut out);
                out
            }
        }
    }
}

/// A lowercase hyphenated UUID, exactly as it prints back.
fn parse_uuid(id: &str) -> Option<u128> {
    let b = id.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let hex: String = id.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok()
}

fn identity_key(id: &Identity) -> u128 {
    fhirlift_core::group::stable_hash128(&[&id.resource_type, &id.system, &id.value])
}

/// Whether an identifier system held resources when the run began writing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SystemState {
    /// Held none: identities this run did not write need no search.
    Empty,
    /// Held some, or the shortcut was turned off.
    Populated,
}

/// What the resolver remembers across requests.
#[derive(Default)]
pub(super) struct Resolver {
    ids: Mutex<IdCache>,
    systems: Mutex<HashMap<(String, String), SystemState>>,
    /// Held while counting systems, so requests in flight together count
    /// each system once.
    counting: tokio::sync::Mutex<()>,
    /// Only references are resolved; writes go as planned (the conditional
    /// strategy on a server that resolves conditional references only in
    /// transactions).
    references_only: bool,
    /// Only requests holding an amendment need it (the conditional strategy
    /// on a server that resolves conditional references everywhere).
    amendments_only: bool,
}

#[derive(Default)]
struct IdCache {
    map: HashMap<u128, CachedId>,
    full: bool,
}

/// One resource found by a search, or placed by the ledger.
#[derive(Debug, Clone)]
struct Found {
    id: String,
    version: Option<String>,
    /// The stored content; `Null` when the ledger placed it (not read, and
    /// known to differ from what is written now).
    resource: Value,
}

impl Found {
    fn placed_by_ledger(&self) -> bool {
        self.resource.is_null()
    }
}

/// One write of a planned entry.
struct PlannedOp {
    resource_type: String,
    identity: Option<Identity>,
    /// Where the ledger says the identity is stored (a changed record).
    stored: Option<StoredAt>,
    /// The planned bundle entry (fullUrl, request, resource).
    entry: Value,
    /// It amends what is stored ([`fhirlift_core::group::Operation::amends`]):
    /// always searched, never placed by the ledger alone.
    amends: bool,
}

/// A top-level entry of the planned request: one write, or a transaction.
struct Unit {
    entry: usize,
    ops: Vec<PlannedOp>,
    transaction: bool,
}

/// What resolving a request decided.
#[derive(Default)]
pub(super) struct Resolution {
    /// (entry, operation) found stored with the same content: no write.
    pub unchanged: Vec<(usize, usize)>,
    /// Entries refused before sending, with why.
    pub rejected: Vec<(usize, String)>,
    /// The request to send, if anything is left to write.
    pub write: Option<WritePlan>,
    /// The `RateLimit` of the last search answered.
    pub quotas: Vec<Quota>,
    /// Whether some write goes to an id the ledger gave, unchecked: an
    /// answer refusing it may only mean the ledger is stale.
    pub from_ledger: bool,
}

/// The bundle the resolver sends instead of the planned one.
pub(super) struct WritePlan {
    pub kind: RequestKind,
    pub body: Vec<u8>,
    /// One per top-level entry of `body`, in order.
    pub sent: Vec<SentEntry>,
}

/// A top-level entry of the write: which planned entry and operations.
pub(super) struct SentEntry {
    pub entry: usize,
    /// Operation indexes within the group, in the order they are sent.
    pub ops: Vec<usize>,
    /// The identity each sent operation writes, to remember created ids.
    pub identities: Vec<Option<Identity>>,
    /// Whether one of its writes goes to an id the ledger gave.
    pub from_ledger: bool,
}

impl Resolver {
    /// A resolver that rewrites references and leaves writes conditional.
    pub(super) fn references_only() -> Resolver {
        Resolver {
            references_only: true,
            ..Resolver::default()
        }
    }

    /// A resolver for amendments alone: writes and references go as
    /// planned, an amendment is read and written by id.
    pub(super) fn amendments_only() -> Resolver {
        Resolver {
            references_only: true,
            amendments_only: true,
            ..Resolver::default()
        }
    }

    /// Whether a planned request needs resolving at all: a references-only
    /// resolver has nothing to do for a request without conditional
    /// references (found by a byte scan, without parsing) or amendments.
    pub(super) fn needed_for(&self, request: &Request) -> bool {
        !self.references_only
            || request.groups.iter().any(|g| g.amends.contains(&true))
            || (!self.amendments_only && has_conditional_reference(&request.body))
    }

    /// Resolves a planned request: searches, then decides each write.
    /// With `use_ledger` (a first try), an identity the ledger places (a
    /// changed record: [`fhirlift_core::group::Operation::stored`]) is written by
    /// that id and not searched; a retry searches
    /// everything. An `Err` is the answer of a search that failed (retry
    /// the request).
    pub(super) async fn resolve(
        &self,
        http: &Http,
        request: &Request,
        use_ledger: bool,
    ) -> Result<Resolution, Answer> {
        let mut resolution = Resolution::default();
        let units = match plan_units(request) {
            Ok(units) => units,
            Err(why) => {
                resolution.rejected = (0..request.entries.len())
                    .map(|i| (i, why.clone()))
                    .collect();
                return Ok(resolution);
            }
        };
        // what to look up
        let mut wanted: Vec<Identity> = Vec::new();
        let mut seen: HashSet<&Identity> = HashSet::new();
        // an identity the ledger places is neither counted nor searched
        let placing = use_ledger && !self.references_only;
        let unknown_systems = |systems: &HashMap<(String, String), SystemState>| {
            let mut unknown: Vec<(String, String)> = Vec::new();
            for op in units.iter().flat_map(|u| &u.ops) {
                if placing && op.stored.is_some() && !op.amends {
                    continue;
                }
                if let Some(id) = &op.identity {
                    let key = (id.resource_type.clone(), id.system.clone());
                    if !systems.contains_key(&key) && !unknown.contains(&key) {
                        unknown.push(key);
                    }
                }
            }
            unknown
        };
        let first_look = unknown_systems(&self.systems.lock().unwrap_or_else(|p| p.into_inner()));
        if !first_look.is_empty() && !self.references_only {
            let _counting = self.counting.lock().await;
            // another request may have counted them meanwhile
            let unknown = unknown_systems(&self.systems.lock().unwrap_or_else(|p| p.into_inner()));
            for (resource_type, system) in unknown {
                let (total, quotas) = self.count(http, &resource_type, &system).await?;
                resolution.quotas = quotas;
                let state = if total == 0 {
                    SystemState::Empty
                } else {
                    SystemState::Populated
                };
                self.systems
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry((resource_type, system))
                    .or_insert(state);
            }
        }
        let mut references: Vec<Identity> = Vec::new();
        for op in units.iter().flat_map(|u| &u.ops) {
            conditional_references(&op.entry["resource"], &mut references);
        }
        // where the ledger says this request's identities are stored
        let mut placed: HashMap<Identity, Found> = HashMap::new();
        if placing {
            for op in units.iter().flat_map(|u| &u.ops).filter(|op| !op.amends) {
                if let (Some(id), Some(at)) = (&op.identity, &op.stored) {
                    placed.insert(
                        id.clone(),
                        Found {
                            id: at.id.clone(),
                            version: at.version.clone(),
                            resource: Value::Null,
                        },
                    );
                }
            }
        }
        let mut known_refs: HashMap<Identity, String> = HashMap::new();
        {
            let cache = self.ids.lock().unwrap_or_else(|p| p.into_inner());
            let systems = self.systems.lock().unwrap_or_else(|p| p.into_inner());
            let absent = |id: &Identity, cached: bool| {
                !cache.full
                    && !cached
                    && systems.get(&(id.resource_type.clone(), id.system.clone()))
                        == Some(&SystemState::Empty)
            };
            for op in units.iter().flat_map(|u| &u.ops) {
                if let Some(id) = &op.identity
                    && (!self.references_only || op.amends)
                    && !placed.contains_key(id)
                {
                    let cached = cache.map.contains_key(&identity_key(id));
                    if !absent(id, cached) && seen.insert(id) {
                        wanted.push(id.clone());
                    }
                }
            }
            for id in &references {
                if let Some(f) = placed.get(id) {
                    known_refs.insert(id.clone(), format!("{}/{}", id.resource_type, f.id));
                    continue;
                }
                match cache.map.get(&identity_key(id)) {
                    Some(cached) => {
                        known_refs.insert(
                            id.clone(),
                            format!("{}/{}", id.resource_type, cached.to_text()),
                        );
                    }
                    None if absent(id, false) => {}
                    None => {
                        if !wanted.contains(id) {
                            wanted.push(id.clone());
                        }
                    }
                }
            }
        }
        // search, one type at a time
        let mut found: HashMap<Identity, Vec<Found>> = HashMap::new();
        let mut by_type: Vec<(String, Vec<&Identity>)> = Vec::new();
        for id in &wanted {
            match by_type.iter_mut().find(|(t, _)| *t == id.resource_type) {
                Some((_, list)) => list.push(id),
                None => by_type.push((id.resource_type.clone(), vec![id])),
            }
        }
        for (resource_type, ids) in &by_type {
            for chunk in ids.chunks(100) {
                let (resources, quotas) = self.search(http, resource_type, chunk).await?;
                resolution.quotas = quotas;
                let want: HashSet<&Identity> = chunk.iter().copied().collect();
                for resource in resources {
                    let Some(id) = resource["id"].as_str().map(str::to_owned) else {
                        continue;
                    };
                    let version = resource["meta"]["versionId"].as_str().map(str::to_owned);
                    for identity in held_identities(&resource, resource_type, &want) {
                        let list = found.entry(identity).or_default();
                        if !list.iter().any(|f| f.id == id) {
                            list.push(Found {
                                id: id.clone(),
                                version: version.clone(),
                                resource: resource.clone(),
                            });
                        }
                    }
                }
            }
        }
        // remember what is now known for sure
        {
            let mut cache = self.ids.lock().unwrap_or_else(|p| p.into_inner());
            for (identity, list) in &found {
                if let [one] = list.as_slice() {
                    cache.insert(identity, &one.id);
                }
            }
        }
        for id in &references {
            if let Some([one]) = found.get(id).map(Vec::as_slice) {
                known_refs.insert(id.clone(), format!("{}/{}", id.resource_type, one.id));
            }
        }
        for (identity, at) in placed {
            found.entry(identity).or_insert_with(|| vec![at]);
        }
        self.decide(request, units, &found, &known_refs, &mut resolution);
        Ok(resolution)
    }

    /// Turns each unit into writes by id, skips and rejects.
    fn decide(
        &self,
        request: &Request,
        units: Vec<Unit>,
        found: &HashMap<Identity, Vec<Found>>,
        known_refs: &HashMap<Identity, String>,
        resolution: &mut Resolution,
    ) {
        let nested = request.kind == RequestKind::BatchOfTransactions;
        let mut entries: Vec<Value> = Vec::new();
        let mut sent: Vec<SentEntry> = Vec::new();
        'units: for unit in units {
            let first_op = request.entries[unit.entry].first_op;
            // where each operation stands on the server
            let mut stored: Vec<Option<&Found>> = Vec::with_capacity(unit.ops.len());
            for op in &unit.ops {
                let list = op
                    .identity
                    .as_ref()
                    .and_then(|id| found.get(id))
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                match list {
                    [] => stored.push(None),
                    [one] => stored.push(Some(one)),
                    many => {
                        let id = op.identity.as_ref().expect("only identities are found");
                        let ids: Vec<String> = many
                            .iter()
                            .map(|f| format!("{}/{}", id.resource_type, f.id))
                            .collect();
                        resolution.rejected.push((
                            unit.entry,
                            format!(
                                "{} stored {} resources hold the identifier {}|{} ({}); fhirlift never picks one: merge or delete the duplicates on the server, then run again",
                                many.len(),
                                id.resource_type,
                                id.system,
                                id.value,
                                ids.join(", ")
                            ),
                        ));
                        continue 'units;
                    }
                }
            }
            // a transaction's own urn:uuid references to stored resources become ids
            let mut local: HashMap<String, String> = HashMap::new();
            for (op, s) in unit.ops.iter().zip(&stored) {
                if let (Some(full_url), Some(f)) = (op.entry["fullUrl"].as_str(), s) {
                    local.insert(
                        full_url.to_owned(),
                        format!("{}/{}", op.resource_type, f.id),
                    );
                }
            }
            let mut out_entries: Vec<Value> = Vec::new();
            let mut out_ops: Vec<usize> = Vec::new();
            let mut out_ids: Vec<Option<Identity>> = Vec::new();
            let mut from_ledger = false;
            for (k, (op, s)) in unit.ops.iter().zip(&stored).enumerate() {
                let mut resource = op.entry["resource"].clone();
                rewrite_references(&mut resource, &|r| {
                    if r.starts_with("urn:uuid:") {
                        local.get(r).cloned()
                    } else {
                        parse_conditional_url(r).and_then(|id| known_refs.get(&id).cloned())
                    }
                });
                let entry = match (s, &op.identity) {
                    _ if self.references_only && !(op.amends && s.is_some()) => {
                        let mut entry = op.entry.clone();
                        entry["resource"] = resource;
                        entry
                    }
                    (Some(f), _) => {
                        if op.amends {
                            // never placed by the ledger alone: read just now
                            resource = amend(&f.resource, &resource);
                        }
                        if f.placed_by_ledger() {
                            from_ledger = true;
                        } else if same_content(&resource, &f.resource) {
                            resolution.unchanged.push((unit.entry, first_op + k));
                            continue;
                        }
                        if let Some(map) = resource.as_object_mut() {
                            map.insert("id".into(), Value::String(f.id.clone()));
                        }
                        let mut request = json!({
                            "method": "PUT",
                            "url": format!("{}/{}", op.resource_type, f.id),
                        });
                        // a version read now guards the write; the ledger's, from
                        // an earlier write (maybe one settled moments ago in this
                        // run), would only turn our own next write into a 412
                        if let Some(v) = f.version.as_ref().filter(|_| !f.placed_by_ledger()) {
                            request["ifMatch"] = Value::String(format!("W/\"{v}\""));
                        }
                        json!({ "request": request, "resource": resource })
                    }
                    (None, Some(_)) => {
                        let mut entry = json!({
                            "request": { "method": "POST", "url": op.resource_type },
                            "resource": resource,
                        });
                        if let Some(full_url) = op.entry.get("fullUrl") {
                            entry["fullUrl"] = full_url.clone();
                        }
                        entry
                    }
                    // a plain create (`write: create`) or a search the
                    // resolver does not read: sent as planned, references resolved
                    (None, None) => {
                        let mut entry = op.entry.clone();
                        entry["resource"] = resource;
                        entry
                    }
                };
                out_entries.push(entry);
                out_ops.push(first_op + k);
                out_ids.push(op.identity.clone());
            }
            if out_entries.is_empty() {
                continue;
            }
            if unit.transaction {
                let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": out_entries });
                if nested {
                    entries.push(
                        json!({ "request": { "method": "POST", "url": "/" }, "resource": bundle }),
                    );
                } else {
                    entries.push(bundle);
                }
            } else {
                entries.extend(out_entries);
            }
            resolution.from_ledger |= from_ledger;
            sent.push(SentEntry {
                entry: unit.entry,
                ops: out_ops,
                identities: out_ids,
                from_ledger,
            });
        }
        if sent.is_empty() {
            return;
        }
        let body = if request.kind == RequestKind::Transaction {
            entries.pop().expect("a transaction request has one unit")
        } else {
            json!({ "resourceType": "Bundle", "type": "batch", "entry": entries })
        };
        resolution.write = Some(WritePlan {
            kind: request.kind,
            body: serde_json::to_vec(&body).expect("JSON values serialize"),
            sent,
        });
    }

    /// Remembers the id the server gave an identity.
    pub(super) fn created(&self, identity: &Identity, id: &str) {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(identity, id);
    }

    /// After an ambiguous failure, writes to these systems may have landed
    /// unseen: search them from now on.
    pub(super) fn distrust(&self, request: &Request) {
        let Ok(units) = plan_units(request) else {
            return;
        };
        for id in units
            .iter()
            .flat_map(|u| &u.ops)
            .filter_map(|o| o.identity.as_ref())
        {
            self.distrust_system(id);
        }
    }

    /// Searches the identity's system from now on.
    pub(super) fn distrust_system(&self, id: &Identity) {
        self.systems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                (id.resource_type.clone(), id.system.clone()),
                SystemState::Populated,
            );
    }

    /// `Type?identifier=system|&_summary=count`: how many resources hold an
    /// identifier in the system.
    async fn count(
        &self,
        http: &Http,
        resource_type: &str,
        system: &str,
    ) -> Result<(u64, Vec<Quota>), Answer> {
        let mut url = format!("{}/{resource_type}?identifier=", http.base);
        encode_query_part(&escape_search_value(system), &mut url);
        url.push_str("|&_summary=count");
        match http.search_get(&url).await {
            Answer::Http {
                status: 200..=299,
                body,
                ..
            } if !is_searchset(&body) => Err(not_a_searchset(resource_type, &body)),
            Answer::Http {
                status: 200..=299,
                body,
                quotas,
                ..
            } => match body["total"].as_u64() {
                Some(total) => Ok((total, quotas)),
                // no total: assume populated, never skip a search wrongly
                None => Ok((u64::MAX, quotas)),
            },
            // a server that cannot count a system: no shortcut, search always
            Answer::Http {
                status: 400..=428 | 430..=499,
                quotas,
                ..
            } => Ok((u64::MAX, quotas)),
            other => Err(other),
        }
    }

    /// Finds the resources holding any of `ids`, every page.
    async fn search(
        &self,
        http: &Http,
        resource_type: &str,
        ids: &[&Identity],
    ) -> Result<(Vec<Value>, Vec<Quota>), Answer> {
        crate::reader::search_identities(http, resource_type, ids).await
    }
}

impl IdCache {
    fn insert(&mut self, identity: &Identity, id: &str) {
        if self.map.len() >= ID_CACHE_CAP && !self.map.contains_key(&identity_key(identity)) {
            self.full = true;
            return;
        }
        self.map.insert(identity_key(identity), CachedId::new(id));
    }
}

/// Reads a planned request into units of writes.
fn plan_units(request: &Request) -> Result<Vec<Unit>, String> {
    let bad = |e: serde_json::Error| format!("the planned request is not valid JSON: {e}");
    let mut units = Vec::with_capacity(request.entries.len());
    for (i, e) in request.entries.iter().enumerate() {
        let entry: Value = serde_json::from_slice(&request.body[e.range.clone()]).map_err(bad)?;
        let (transaction, entries) = match request.kind {
            RequestKind::Batch => (false, vec![entry]),
            RequestKind::Transaction => (true, take_entries(entry)),
            RequestKind::BatchOfTransactions => {
                let mut entry = entry;
                (true, take_entries(entry["resource"].take()))
            }
        };
        let group = &request.groups[e.group];
        let ops = entries
            .into_iter()
            .enumerate()
            .map(|(k, entry)| {
                let url = entry["request"]["url"].as_str().unwrap_or("");
                let identity = (entry["request"]["method"] == "PUT")
                    .then(|| parse_conditional_url(url))
                    .flatten();
                // the group's operation this entry carries, if it is the same identity
                let at = e.first_op + k;
                let ours = identity.is_some() && group.identities.get(at) == Some(&identity);
                let stored = group.stored.get(at).cloned().flatten().filter(|_| ours);
                let amends = ours && group.amends.get(at) == Some(&true);
                PlannedOp {
                    resource_type: entry["resource"]["resourceType"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                    identity,
                    stored,
                    entry,
                    amends,
                }
            })
            .collect();
        units.push(Unit {
            entry: i,
            ops,
            transaction,
        });
    }
    Ok(units)
}

fn take_entries(mut bundle: Value) -> Vec<Value> {
    match bundle["entry"].take() {
        Value::Array(entries) => entries,
        _ => Vec::new(),
    }
}

/// Whether JSON text holds a `"reference":"Type?…"`.
fn has_conditional_reference(body: &[u8]) -> bool {
    const KEY: &[u8] = b"\"reference\":\"";
    let mut at = 0;
    while let Some(i) = body[at..].windows(KEY.len()).position(|w| w == KEY) {
        let start = at + i + KEY.len();
        let rest = &body[start..];
        let letters = rest.iter().take_while(|b| b.is_ascii_alphabetic()).count();
        if letters > 0 && rest.get(letters) == Some(&b'?') {
            return true;
        }
        at = start;
    }
    false
}

/// The id in a write's answer: `response.location` (`Type/id/_history/v`)
/// or the returned resource's `id`.
pub(super) fn answered_id(response: &Value) -> Option<String> {
    if let Some(location) = response["response"]["location"].as_str() {
        let path = location.split("/_history/").next().unwrap_or(location);
        let mut parts = path.rsplit('/');
        if let Some(id) = parts.next()
            && !id.is_empty()
        {
            return Some(id.to_owned());
        }
    }
    response["resource"]["id"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_references_are_spotted_without_parsing() {
        assert!(has_conditional_reference(
            br#"{"subject":{"reference":"Patient?identifier=s|1"}}"#
        ));
        assert!(!has_conditional_reference(
            br#"{"request":{"url":"Patient?identifier=s|1"},"subject":{"reference":"Patient/1"}}"#
        ));
        assert!(!has_conditional_reference(
            br#"{"encounter":{"reference":"urn:uuid:1"}}"#
        ));
    }

    #[test]
    fn uuids_are_cached_compactly_and_print_back() {
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(CachedId::new(id), CachedId::Uuid(parse_uuid(id).unwrap()));
        assert_eq!(CachedId::new(id).to_text(), id);
        assert_eq!(CachedId::new("00000000002a").to_text(), "00000000002a");
        // an upper-case UUID would not print back the same: kept as text
        let upper = "0F8FAD5B-D9CB-469F-A165-70867728950E";
        assert_eq!(CachedId::new(upper).to_text(), upper);
    }

    #[test]
    fn ids_are_read_from_locations_or_resources() {
        let r = json!({ "response": { "location": "Patient/abc/_history/2" } });
        assert_eq!(answered_id(&r).as_deref(), Some("abc"));
        let r = json!({ "response": { "location": "http://h/fhir/R4/Patient/abc" } });
        assert_eq!(answered_id(&r).as_deref(), Some("abc"));
        let r = json!({ "response": {}, "resource": { "id": "q" } });
        assert_eq!(answered_id(&r).as_deref(), Some("q"));
    }
}
