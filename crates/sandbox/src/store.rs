//! The sandbox's in-memory store and the FHIR write semantics on it.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

use crate::SandboxError;
use crate::query::{Search, Token};
use crate::time::now_instant;

/// A resource as stored: with `id` and `meta`.
#[derive(Debug, Clone)]
pub struct Stored {
    pub resource: Value,
    pub version: u64,
    pub last_updated: String,
}

#[derive(Debug, Default)]
struct TypeStore {
    by_id: HashMap<String, Stored>,
    /// (system, value) → ids holding that identifier.
    by_identifier: HashMap<(String, String), Vec<String>>,
}

/// Every resource the sandbox holds.
#[derive(Debug, Default)]
pub struct Store {
    types: HashMap<String, TypeStore>,
    next_id: u64,
    /// Writes are checked against FHIR R4 and refused with a 400, as a
    /// real server does (set from [`crate::SandboxConfig::no_validation`]).
    pub(crate) validate: bool,
}

/// A refusal with its HTTP status and an OperationOutcome issue code.
#[derive(Debug, Clone)]
pub struct FhirError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl FhirError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> FhirError {
        FhirError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn outcome(&self) -> Value {
        serde_json::json!({
            "resourceType": "OperationOutcome",
            "issue": [{ "severity": "error", "code": self.code, "details": { "text": self.message } }]
        })
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Created,
    Updated,
    /// The content equals the stored one: no new version.
    Unchanged,
}

/// The result of a write: what happened and where the resource is.
#[derive(Debug, Clone)]
pub struct WriteResult {
    pub written: Written,
    pub resource_type: String,
    pub id: String,
    pub version: u64,
    pub last_updated: String,
}

/// What to put back if a transaction fails.
pub(crate) struct Undo {
    resource_type: String,
    id: String,
    previous: Option<Stored>,
}

fn identifiers(resource: &Value) -> Vec<(String, String)> {
    resource
        .get("identifier")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(|i| {
                    Some((
                        i.get("system")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        i.get("value")?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A resource's name for a reference's `display`: a HumanName's `text`, else
/// its given names and family joined by spaces (or a plain string `name`).
fn display_name(resource: &Value) -> Option<String> {
    let name = resource.get("name")?;
    if let Some(s) = name.as_str() {
        return Some(s.to_owned()).filter(|s| !s.trim().is_empty());
    }
    let human = match name {
        Value::Array(names) => names.first()?,
        other => other,
    };
    if let Some(text) = human.get("text").and_then(Value::as_str)
        && !text.trim().is_empty()
    {
        return Some(text.to_owned());
    }
    let mut parts: Vec<&str> = human
        .get("given")
        .and_then(Value::as_array)
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    parts.extend(human.get("family").and_then(Value::as_str));
    parts.retain(|p| !p.trim().is_empty());
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// The resource without what the server adds (`id`, `meta`).
fn content(resource: &Value) -> Map<String, Value> {
    let mut map = resource.as_object().cloned().unwrap_or_default();
    map.shift_remove("id");
    map.shift_remove("meta");
    map
}

impl Store {
    pub fn count(&self, resource_type: &str) -> usize {
        self.types.get(resource_type).map_or(0, |t| t.by_id.len())
    }

    /// Every resource of a type (unordered).
    pub fn resources(&self, resource_type: &str) -> Vec<&Value> {
        self.types
            .get(resource_type)
            .map(|t| t.by_id.values().map(|s| &s.resource).collect())
            .unwrap_or_default()
    }

    pub fn get(&self, resource_type: &str, id: &str) -> Option<&Stored> {
        self.types.get(resource_type)?.by_id.get(id)
    }

    /// Resources of a type holding the identifier.
    pub fn find(&self, resource_type: &str, system: &str, value: &str) -> Vec<&Value> {
        self.matching(
            resource_type,
            &Token {
                system: Some(system.to_owned()),
                value: value.to_owned(),
            },
        )
        .into_iter()
        .filter_map(|id| self.get(resource_type, &id).map(|s| &s.resource))
        .collect()
    }

    fn matching(&self, resource_type: &str, token: &Token) -> Vec<String> {
        let Some(t) = self.types.get(resource_type) else {
            return Vec::new();
        };
        match &token.system {
            Some(system) if token.value.is_empty() => t
                .by_identifier
                .iter()
                .filter(|((s, _), _)| s == system)
                .flat_map(|(_, ids)| ids.iter().cloned())
                .collect(),
            Some(system) => t
                .by_identifier
                .get(&(system.clone(), token.value.clone()))
                .cloned()
                .unwrap_or_default(),
            None => t
                .by_identifier
                .iter()
                .filter(|((_, v), _)| *v == token.value)
                .flat_map(|(_, ids)| ids.iter().cloned())
                .collect(),
        }
    }

    /// Ids matching a search, each once, in a stable order.
    pub fn search(&self, resource_type: &str, search: &Search) -> Vec<String> {
        let mut ids: Vec<String> = if search.identifiers.is_empty() {
            search
                .ids
                .iter()
                .filter(|id| self.get(resource_type, id).is_some())
                .cloned()
                .collect()
        } else {
            search
                .identifiers
                .iter()
                .flat_map(|t| self.matching(resource_type, t))
                .filter(|id| search.ids.is_empty() || search.ids.contains(id))
                .collect()
        };
        ids.sort();
        ids.dedup();
        ids
    }

    /// The id a conditional write targets: none (create), one, or 412.
    pub fn resolve_conditional(
        &self,
        resource_type: &str,
        search: &Search,
    ) -> Result<Option<String>, FhirError> {
        if search.identifiers.is_empty() || !search.unsupported.is_empty() {
            return Err(FhirError::new(
                400,
                "not-supported",
                format!(
                    "the sandbox resolves conditional writes by identifier only (got {:?})",
                    search.unsupported
                ),
            ));
        }
        let ids = self.search(resource_type, search);
        match ids.len() {
            0 => Ok(None),
            1 => Ok(ids.into_iter().next()),
            _ => Err(FhirError::new(
                412,
                "multiple-matches",
                format!("Multiple resources found matching {resource_type} conditional update"),
            )),
        }
    }

    /// A new version of a stored resource with the same content, as if
    /// another client had written it.
    pub fn touch(&mut self, resource_type: &str, id: &str) {
        let Some(stored) = self
            .types
            .get_mut(resource_type)
            .and_then(|t| t.by_id.get_mut(id))
        else {
            return;
        };
        stored.version += 1;
        stored.last_updated = now_instant();
        if let Some(meta) = stored
            .resource
            .get_mut("meta")
            .and_then(Value::as_object_mut)
        {
            meta.insert(
                "versionId".into(),
                Value::String(stored.version.to_string()),
            );
            meta.insert(
                "lastUpdated".into(),
                Value::String(stored.last_updated.clone()),
            );
        }
    }

    pub fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("{:012x}", self.next_id)
    }

    /// Writes `resource` as `resource_type/id`: a create when the id is new.
    pub(crate) fn write(
        &mut self,
        resource_type: &str,
        id: &str,
        mut resource: Value,
        undo: Option<&mut Vec<Undo>>,
    ) -> Result<WriteResult, FhirError> {
        if resource.get("resourceType").and_then(Value::as_str) != Some(resource_type) {
            return Err(FhirError::new(
                400,
                "invalid",
                format!("the body is not a {resource_type}"),
            ));
        }
        if self.validate {
            let mut issues = fhirlift_fhir::validate(&resource);
            issues.retain(fhirlift_fhir::Issue::is_error);
            if !issues.is_empty() {
                let said: Vec<String> = issues.iter().map(ToString::to_string).collect();
                return Err(FhirError::new(400, "invalid", said.join("; ")));
            }
        }
        let t = self.types.entry(resource_type.to_owned()).or_default();
        let previous = t.by_id.get(id).cloned();
        if let Some(prev) = &previous
            && content(&prev.resource) == content(&resource)
        {
            return Ok(WriteResult {
                written: Written::Unchanged,
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
                version: prev.version,
                last_updated: prev.last_updated.clone(),
            });
        }
        let version = previous.as_ref().map_or(1, |p| p.version + 1);
        let last_updated = now_instant();
        if let Some(map) = resource.as_object_mut() {
            map.insert("id".into(), Value::String(id.to_owned()));
            map.insert(
                "meta".into(),
                serde_json::json!({ "versionId": version.to_string(), "lastUpdated": last_updated }),
            );
        }
        if let Some(prev) = &previous {
            for key in identifiers(&prev.resource) {
                if let Some(ids) = t.by_identifier.get_mut(&key) {
                    ids.retain(|i| i != id);
                }
            }
        }
        for key in identifiers(&resource) {
            let ids = t.by_identifier.entry(key).or_default();
            if !ids.iter().any(|i| i == id) {
                ids.push(id.to_owned());
            }
        }
        t.by_id.insert(
            id.to_owned(),
            Stored {
                resource,
                version,
                last_updated: last_updated.clone(),
            },
        );
        if let Some(undo) = undo {
            undo.push(Undo {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
                previous: previous.clone(),
            });
        }
        Ok(WriteResult {
            written: if previous.is_some() {
                Written::Updated
            } else {
                Written::Created
            },
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
            version,
            last_updated,
        })
    }

    /// Deletes a stored resource, as a client deleting it by hand would
    /// (tests of what fhirlift does when its ledger is stale).
    pub fn remove(&mut self, resource_type: &str, id: &str) -> bool {
        let Some(t) = self.types.get_mut(resource_type) else {
            return false;
        };
        let Some(gone) = t.by_id.remove(id) else {
            return false;
        };
        for key in identifiers(&gone.resource) {
            if let Some(ids) = t.by_identifier.get_mut(&key) {
                ids.retain(|i| i != id);
            }
        }
        true
    }

    /// Puts back what a failed transaction changed, newest first.
    pub(crate) fn roll_back(&mut self, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            let t = self.types.entry(u.resource_type).or_default();
            if let Some(current) = t.by_id.remove(&u.id) {
                for key in identifiers(&current.resource) {
                    if let Some(ids) = t.by_identifier.get_mut(&key) {
                        ids.retain(|i| *i != u.id);
                    }
                }
            }
            if let Some(prev) = u.previous {
                for key in identifiers(&prev.resource) {
                    t.by_identifier.entry(key).or_default().push(u.id.clone());
                }
                t.by_id.insert(u.id, prev);
            }
        }
    }

    /// Rewrites references: `urn:uuid:` through `local`, conditional ones
    /// (`Type?identifier=…`) to `Type/id` when exactly one resource matches;
    /// with `display`, a resolved conditional reference also gets a
    /// `display` (the target's name) unless it has one, as Medplum adds.
    pub(crate) fn resolve_references(
        &self,
        value: &mut Value,
        local: &HashMap<String, String>,
        display: bool,
    ) -> Result<(), FhirError> {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get("reference")
                    && let Some((target, name)) = self.resolve_reference(reference, local)?
                {
                    map.insert("reference".into(), Value::String(target));
                    if display
                        && let Some(name) = name
                        && !map.contains_key("display")
                    {
                        map.insert("display".into(), Value::String(name));
                    }
                }
                for (key, v) in map.iter_mut() {
                    if key != "reference" {
                        self.resolve_references(v, local, display)?;
                    }
                }
                Ok(())
            }
            Value::Array(items) => items
                .iter_mut()
                .try_for_each(|v| self.resolve_references(v, local, display)),
            _ => Ok(()),
        }
    }

    /// The target of a reference to rewrite, with the target's name for a
    /// conditional one; none for a plain reference (kept as sent).
    fn resolve_reference(
        &self,
        reference: &str,
        local: &HashMap<String, String>,
    ) -> Result<Option<(String, Option<String>)>, FhirError> {
        if reference.starts_with("urn:uuid:") {
            return match local.get(reference) {
                Some(target) => Ok(Some((target.clone(), None))),
                None => Err(FhirError::new(
                    400,
                    "invalid",
                    format!("reference {reference} names no entry of this bundle"),
                )),
            };
        }
        let Some((resource_type, query)) = reference.split_once('?') else {
            return Ok(None);
        };
        let search = crate::query::parse_search(query);
        let ids = self.search(resource_type, &search);
        match ids.as_slice() {
            [id] => {
                let target = format!("{resource_type}/{id}");
                let name = self
                    .get(resource_type, id)
                    .and_then(|s| display_name(&s.resource))
                    .unwrap_or_else(|| target.clone());
                Ok(Some((target, Some(name))))
            }
            [] => Err(FhirError::new(
                400,
                "invalid",
                format!("Conditional reference '{reference}' did not match any resources"),
            )),
            _ => Err(FhirError::new(
                400,
                "invalid",
                format!("Conditional reference '{reference}' matched multiple resources"),
            )),
        }
    }

    /// Saves every type as `DIR/Type.ndjson`.
    pub fn save(&self, dir: &Path) -> Result<(), SandboxError> {
        use std::io::Write;
        let err = |e: std::io::Error| SandboxError::Store {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        // only its own files: another NDJSON file in the folder (a rejects
        // file, a report) is left alone
        for entry in std::fs::read_dir(dir).map_err(err)? {
            let path = entry.map_err(err)?.path();
            if is_store_file(&path) {
                std::fs::remove_file(path).map_err(err)?;
            }
        }
        for (resource_type, t) in &self.types {
            let mut out = std::io::BufWriter::new(
                std::fs::File::create(dir.join(format!("{resource_type}.ndjson"))).map_err(err)?,
            );
            let mut ids: Vec<&String> = t.by_id.keys().collect();
            ids.sort();
            for id in ids {
                serde_json::to_writer(&mut out, &t.by_id[id].resource)
                    .map_err(|e| err(e.into()))?;
                out.write_all(b"\n").map_err(err)?;
            }
            out.flush().map_err(err)?;
        }
        Ok(())
    }

    /// Loads every `DIR/<ResourceType>.ndjson` saved by [`Store::save`]; a
    /// missing folder is an empty store.
    pub fn load(dir: &Path) -> Result<Store, SandboxError> {
        let mut store = Store::default();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(store);
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !is_store_file(&path) {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| SandboxError::Store {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let bad = |message: String| SandboxError::Store {
                    path: format!("{}:{}", path.display(), n + 1),
                    message,
                };
                let resource: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
                let resource_type = resource["resourceType"]
                    .as_str()
                    .ok_or_else(|| bad("no resourceType".into()))?
                    .to_owned();
                let id = resource["id"]
                    .as_str()
                    .ok_or_else(|| bad("no id".into()))?
                    .to_owned();
                let version = resource["meta"]["versionId"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                let last_updated = resource["meta"]["lastUpdated"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                if let Ok(n) = u64::from_str_radix(&id, 16) {
                    store.next_id = store.next_id.max(n);
                }
                let t = store.types.entry(resource_type).or_default();
                for key in identifiers(&resource) {
                    t.by_identifier.entry(key).or_default().push(id.clone());
                }
                t.by_id.insert(
                    id,
                    Stored {
                        resource,
                        version,
                        last_updated,
                    },
                );
            }
        }
        Ok(store)
    }
}

/// Whether `path` is one of a store's files: `<ResourceType>.ndjson`, a
/// FHIR type name (a capital letter, then letters and digits).
fn is_store_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "ndjson")
        && path.file_stem().and_then(|s| s.to_str()).is_some_and(|s| {
            s.starts_with(|c: char| c.is_ascii_uppercase())
                && s.chars().all(|c| c.is_ascii_alphanumeric())
        })
}
