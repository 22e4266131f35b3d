//! One batch of mapped records checked against the server: the searches
//! by identifier, the references resolved to ids, the comparison, and the
//! references of what is stored checked for targets that are gone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

use fhirlift_core::content::{
    amend, conditional_references, differences, held_identities, rewrite_references,
};
use fhirlift_core::group::{Identity, WriteGroup, parse_conditional_url};
use fhirlift_http::{ReadError, ServerReader};

use crate::findings::{Finding, Kind};

/// Identifiers per search.
const PER_SEARCH: usize = 100;
/// The most ids the shared cache keeps (about 100 bytes each); past it,
/// references are searched again instead of remembered.
const CACHE_CAP: usize = 2_000_000;

/// What every batch of a run learns about the server: identity → id (when
/// exactly one resource holds it), and the `Type/id`s known to exist.
#[derive(Default)]
pub(crate) struct Known {
    ids: HashMap<Identity, String>,
    exists: HashSet<String>,
}

impl Known {
    fn remember(&mut self, identity: &Identity, id: &str) {
        if self.ids.len() < CACHE_CAP {
            self.ids.insert(identity.clone(), id.to_owned());
            self.exists
                .insert(format!("{}/{id}", identity.resource_type));
        }
    }
}

/// A record's group, with the stream it came from.
pub(crate) struct Pending {
    pub stream: Arc<str>,
    pub group: WriteGroup,
    /// The record's place in the source, counted over every stream.
    pub ordinal: u64,
}

/// What a first pass over the source says of identities written more than
/// once.
#[derive(Default)]
pub(crate) struct Winners {
    /// Where a later record replaces an earlier one (`later-wins`): per
    /// identity key, the ordinal of the last record writing it whole. An
    /// earlier record's resource is not what the server should hold, so it
    /// is not compared.
    pub last: HashMap<u128, u64>,
    /// Per identity key, the elements amendments write on it
    /// ([`fhirlift_core::group::Operation::amends`]): each amendment checks
    /// them, the whole writes of that identity do not.
    pub amended: HashMap<u128, Vec<String>>,
}

/// The key of an identity in [`Winners`].
pub(crate) fn identity_key(resource_type: &str, system: &str, value: &str) -> u128 {
    fhirlift_core::group::stable_hash128(&[resource_type, system, value])
}

/// Whether an operation of the record `ordinal` is replaced by a later
/// record of the source.
fn superseded(winners: &Winners, identity: &Identity, ordinal: u64) -> bool {
    winners
        .last
        .get(&identity_key(
            &identity.resource_type,
            &identity.system,
            &identity.value,
        ))
        .is_some_and(|last| *last != ordinal)
}

/// What `stored` would hold without the amendments that wrote `names` on
/// it: those elements as `mapped` has them (or absent).
fn unamended(stored: &Value, mapped: &Value, names: &[String]) -> Value {
    let mut out = stored.clone();
    if let Some(obj) = out.as_object_mut() {
        for name in names {
            match mapped.get(name) {
                Some(v) => obj.insert(name.clone(), v.clone()),
                None => obj.remove(name),
            };
        }
    }
    out
}

/// Checks a batch: one finding per operation with an identity, plus one
/// per dangling reference of what is stored.
pub(crate) async fn check_batch(
    reader: &ServerReader,
    known: &Mutex<Known>,
    winners: &Winners,
    batch: Vec<Pending>,
) -> Result<Vec<Finding>, ReadError> {
    // 1. what the server holds for each identity the batch writes
    let mut wanted: Vec<&Identity> = Vec::new();
    for pending in &batch {
        for op in &pending.group.operations {
            if let Some(id) = &op.identity
                && !wanted.contains(&id)
            {
                wanted.push(id);
            }
        }
    }
    let mut found = search(reader, &wanted).await?;
    {
        let mut known = lock(known);
        for (identity, stored) in &found {
            if let [one] = stored.as_slice()
                && let Some(id) = one["id"].as_str()
            {
                known.remember(identity, id);
            }
        }
    }
    // 2. the identities the mapped resources refer to, not known yet
    // each mapped resource parsed once, for its references and the comparison
    let mut parsed: Vec<Vec<Value>> = batch
        .iter()
        .map(|p| {
            p.group
                .operations
                .iter()
                .map(|op| op.resource.to_value())
                .collect()
        })
        .collect();
    let mut references: Vec<Identity> = Vec::new();
    for resource in parsed.iter().flatten() {
        conditional_references(resource, &mut references);
    }
    let unknown: Vec<&Identity> = {
        let known = lock(known);
        references
            .iter()
            .filter(|r| !known.ids.contains_key(*r) && !found.contains_key(*r))
            .collect()
    };
    if !unknown.is_empty() {
        let more = search(reader, &unknown).await?;
        let mut known = lock(known);
        for (identity, stored) in more {
            if let [one] = stored.as_slice()
                && let Some(id) = one["id"].as_str()
            {
                known.remember(&identity, id);
            }
            found.entry(identity).or_insert(stored);
        }
    }
    // 3. compare, group by group
    let mut findings = Vec::new();
    let mut stored_refs: Vec<(usize, String, String)> = Vec::new();
    for (pending, resources) in batch.iter().zip(parsed.iter_mut()) {
        let group = &pending.group;
        // a group's own urn:uuid references, to the stored ids
        let mut local: HashMap<String, String> = HashMap::new();
        for op in &group.operations {
            if let (Some(url), Some(id)) = (&op.full_url, &op.identity)
                && let Some([one]) = found.get(id).map(Vec::as_slice)
                && let Some(stored_id) = one["id"].as_str()
            {
                local.insert(url.clone(), format!("{}/{stored_id}", op.resource_type));
            }
        }
        for (op, mapped) in group.operations.iter().zip(resources.iter_mut()) {
            // what a later record replaces is not what the server should
            // hold (it still placed the group's urn:uuids, above)
            if !op.amends
                && op
                    .identity
                    .as_ref()
                    .is_some_and(|id| superseded(winners, id, pending.ordinal))
            {
                continue;
            }
            let Some(identity) = &op.identity else {
                // a plain create: nothing identifies it on the server
                let mut finding = Finding::new(Kind::Unverifiable, op.resource_type.clone());
                finding.stream = Some(pending.stream.to_string());
                finding.record = Some(group.provenance.to_string());
                findings.push(finding);
                continue;
            };
            let mut finding = Finding::new(Kind::Equal, op.resource_type.clone());
            finding.stream = Some(pending.stream.to_string());
            finding.identifier = Some(format!("{}|{}", identity.system, identity.value));
            finding.record = Some(group.provenance.to_string());
            let stored = found.get(identity).map(Vec::as_slice).unwrap_or_default();
            finding.server = stored
                .iter()
                .filter_map(|r| r["id"].as_str())
                .map(|id| format!("{}/{id}", op.resource_type))
                .collect();
            match stored {
                [] => finding.finding = Kind::Missing,
                [one] => {
                    {
                        let known = lock(known);
                        rewrite_references(mapped, &|r| {
                            if r.starts_with("urn:uuid:") {
                                return local.get(r).cloned();
                            }
                            let id = parse_conditional_url(r)?;
                            let stored = known.ids.get(&id).cloned().or_else(|| {
                                match found.get(&id).map(Vec::as_slice) {
                                    Some([one]) => one["id"].as_str().map(str::to_owned),
                                    _ => None,
                                }
                            })?;
                            Some(format!("{}/{stored}", id.resource_type))
                        });
                    }
                    let paths = if op.amends {
                        differences(&amend(one, mapped), one)
                    } else {
                        let key = identity_key(
                            &identity.resource_type,
                            &identity.system,
                            &identity.value,
                        );
                        match winners.amended.get(&key) {
                            Some(names) => differences(mapped, &unamended(one, mapped, names)),
                            None => differences(mapped, one),
                        }
                    };
                    if !paths.is_empty() {
                        finding.finding = Kind::Different;
                        finding.values = Some(values_at(mapped, one, &paths));
                        finding.paths = paths;
                    }
                    let mut refs = Vec::new();
                    stored_references(one, "", &mut refs);
                    let index = findings.len();
                    stored_refs
                        .extend(refs.into_iter().map(|(path, target)| (index, path, target)));
                }
                _ => finding.finding = Kind::Duplicated,
            }
            findings.push(finding);
        }
    }
    // 4. what stored resources point at, that is not there
    let missing = gone(reader, known, &stored_refs).await?;
    let mut dangling = Vec::new();
    for (index, path, target) in stored_refs {
        if missing.contains(&target) {
            let of = &findings[index];
            let mut finding = Finding::new(Kind::Dangling, of.resource_type.clone());
            finding.stream = of.stream.clone();
            finding.identifier = of.identifier.clone();
            finding.record = of.record.clone();
            finding.server = of.server.clone();
            finding.paths = vec![path];
            finding.reason = Some(format!("{target} is not on the server"));
            dangling.push(finding);
        }
    }
    findings.extend(dangling);
    Ok(findings)
}

fn lock(known: &Mutex<Known>) -> std::sync::MutexGuard<'_, Known> {
    known.lock().unwrap_or_else(|p| p.into_inner())
}

/// The stored resources holding each identity (all of them, by type, in
/// searches of [`PER_SEARCH`] identifiers).
async fn search(
    reader: &ServerReader,
    wanted: &[&Identity],
) -> Result<HashMap<Identity, Vec<Value>>, ReadError> {
    let mut by_type: Vec<(&str, Vec<&Identity>)> = Vec::new();
    for id in wanted {
        match by_type.iter_mut().find(|(t, _)| *t == id.resource_type) {
            Some((_, list)) => list.push(id),
            None => by_type.push((&id.resource_type, vec![id])),
        }
    }
    let mut found: HashMap<Identity, Vec<Value>> = HashMap::new();
    for (resource_type, ids) in by_type {
        for chunk in ids.chunks(PER_SEARCH) {
            let want: HashSet<&Identity> = chunk.iter().copied().collect();
            for resource in reader.find(resource_type, chunk).await? {
                let Some(id) = resource["id"].as_str() else {
                    continue;
                };
                for identity in held_identities(&resource, resource_type, &want) {
                    let list = found.entry(identity).or_default();
                    if !list.iter().any(|r| r["id"].as_str() == Some(id)) {
                        list.push(resource.clone());
                    }
                }
            }
        }
    }
    Ok(found)
}

/// Of the stored references' targets (`Type/id`), those not on the server.
async fn gone(
    reader: &ServerReader,
    known: &Mutex<Known>,
    refs: &[(usize, String, String)],
) -> Result<HashSet<String>, ReadError> {
    let mut ask: Vec<(&str, Vec<&str>)> = Vec::new();
    {
        let known = lock(known);
        let mut asked: HashSet<&str> = HashSet::new();
        for (_, _, target) in refs {
            if known.exists.contains(target) || !asked.insert(target) {
                continue;
            }
            let Some((resource_type, id)) = target.split_once('/') else {
                continue;
            };
            match ask.iter_mut().find(|(t, _)| *t == resource_type) {
                Some((_, ids)) => ids.push(id),
                None => ask.push((resource_type, vec![id])),
            }
        }
    }
    let mut missing = HashSet::new();
    for (resource_type, ids) in ask {
        for chunk in ids.chunks(PER_SEARCH) {
            let there = reader.existing(resource_type, chunk).await?;
            let mut known = lock(known);
            for id in chunk {
                let target = format!("{resource_type}/{id}");
                if there.contains(*id) {
                    if known.exists.len() < CACHE_CAP {
                        known.exists.insert(target);
                    }
                } else {
                    missing.insert(target);
                }
            }
        }
    }
    Ok(missing)
}

/// The relative references (`Type/id`) of a stored resource, with their
/// paths; contained (`#`), absolute and conditional ones are left alone.
fn stored_references(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let here = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                match (key.as_str(), v) {
                    ("reference", Value::String(r)) => {
                        let parts: Vec<&str> = r.split('/').collect();
                        if let [resource_type, id] = parts.as_slice()
                            && resource_type.starts_with(|c: char| c.is_ascii_uppercase())
                            && !id.is_empty()
                            && !r.contains(['?', '#', ':'])
                        {
                            out.push((here, r.clone()));
                        }
                    }
                    ("contained", _) => {}
                    _ => stored_references(v, &here, out),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                stored_references(item, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// `{path: {source, server}}`: the values where the two differ.
fn values_at(mapped: &Value, stored: &Value, paths: &[String]) -> Value {
    let mut out = Map::new();
    for path in paths {
        out.insert(
            path.clone(),
            json!({ "source": value_at(mapped, path), "server": value_at(stored, path) }),
        );
    }
    Value::Object(out)
}

/// The value at `name[0].family` (`Null` when there is none).
fn value_at(value: &Value, path: &str) -> Value {
    let mut here = value;
    for step in path.split('.').filter(|s| !s.is_empty()) {
        let (name, indexes) = match step.find('[') {
            Some(i) => (&step[..i], &step[i..]),
            None => (step, ""),
        };
        here = &here[name];
        for index in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            here = match index.parse::<usize>() {
                Ok(i) => &here[i],
                Err(_) => &Value::Null,
            };
        }
    }
    here.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_at_their_paths() {
        let v = json!({ "name": [{ "family": "Lee", "given": ["A", "B"] }] });
        assert_eq!(value_at(&v, "name[0].given[1]"), "B");
        assert_eq!(value_at(&v, "name[0].family"), "Lee");
        assert_eq!(value_at(&v, "gender"), Value::Null);
    }

    #[test]
    fn stored_references_are_the_relative_ones() {
        let stored = json!({
            "subject": { "reference": "Patient/1" },
            "performer": [{ "reference": "#p1" }, { "reference": "Practitioner/7" }],
            "basedOn": [{ "reference": "http://other/ServiceRequest/3" }],
            "contained": [{ "resourceType": "Practitioner", "id": "p1",
                            "managingOrganization": { "reference": "Organization/9" } }]
        });
        let mut out = Vec::new();
        stored_references(&stored, "", &mut out);
        assert_eq!(
            out,
            [
                ("subject.reference".to_owned(), "Patient/1".to_owned()),
                (
                    "performer[1].reference".to_owned(),
                    "Practitioner/7".to_owned()
                ),
            ]
        );
    }
}
