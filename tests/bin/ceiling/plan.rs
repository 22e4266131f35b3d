//! The resources of `fhirlift-ceiling`: the request bundles of a dry run of
//! the migration, unpacked into one plain resource per entry, with their
//! references resolved to the entries they name and ordered in levels (what
//! refers to nothing first).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

/// `fhirlift migrate --config CONFIG --dry-run WORK --strategy conditional`,
/// in this process (the runner's own code, so the same JSON).
pub fn dry_run(config: &Path, work: &Path) -> anyhow::Result<()> {
    let args = [
        "fhirlift".as_ref(),
        "migrate".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--dry-run".as_ref(),
        work.as_os_str(),
        "--strategy".as_ref(),
        "conditional".as_ref(),
    ]
    .map(std::ffi::OsStr::to_os_string);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = fhirlift::run(args, &mut out, &mut err);
    if code != 0 {
        bail!(
            "the dry run of {} failed (exit {code}): {}{}",
            config.display(),
            String::from_utf8_lossy(&err).trim(),
            if code == fhirlift::EXIT_REJECTS {
                " (records were rejected: the ceiling would not write the same resources)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// One resource to POST.
#[derive(Debug)]
pub struct Item {
    pub resource_type: String,
    pub resource: Value,
    /// `urn:uuid:…` when the dry run gave the entry one.
    full_url: Option<String>,
    /// The file it came from, for messages.
    origin: String,
}

/// Every entry of the dry run's request bundles (`DIR/phase-N/NNNNNN-stream.json`),
/// transactions nested in batches unpacked, in phase and file order.
pub fn read_bundles(dir: &Path) -> anyhow::Result<Vec<Item>> {
    let mut phases: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_str()?
                .strip_prefix("phase-")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    phases.sort();
    let mut items = Vec::new();
    for (_, phase) in phases {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&phase)
            .with_context(|| format!("cannot read {}", phase.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for file in files {
            let text =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let bundle: Value = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let origin = file.display().to_string();
            collect_entries(&bundle, &origin, &mut items)
                .with_context(|| format!("in {origin}"))?;
        }
    }
    if items.is_empty() {
        bail!("the dry run in {} wrote no resources", dir.display());
    }
    Ok(items)
}

/// The entries of `bundle`, a nested transaction's entries in its place.
fn collect_entries(bundle: &Value, origin: &str, items: &mut Vec<Item>) -> anyhow::Result<()> {
    let entries = bundle
        .get("entry")
        .and_then(Value::as_array)
        .context("a bundle without entries")?;
    for entry in entries {
        let resource = entry
            .get("resource")
            .context("an entry without a resource")?;
        let resource_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .context("a resource without resourceType")?;
        if resource_type == "Bundle" {
            collect_entries(resource, origin, items)?;
            continue;
        }
        let mut resource = resource.clone();
        if let Some(object) = resource.as_object_mut() {
            // POST: the server assigns the id
            object.remove("id");
        }
        items.push(Item {
            resource_type: resource_type.to_owned(),
            resource,
            full_url: entry
                .get("fullUrl")
                .and_then(Value::as_str)
                .map(str::to_owned),
            origin: origin.to_owned(),
        });
    }
    Ok(())
}

/// The items, and the levels they are sent in.
pub struct Plan {
    pub items: Vec<Item>,
    /// Per item: the items it refers to, by reference string.
    refs: Vec<Vec<(String, usize)>>,
    /// Item indices, level by level.
    pub levels: Vec<Vec<usize>>,
}

impl Plan {
    /// Resolves every reference that is not already `Type/id` to the item it
    /// names, then orders the items: level 0 refers to nothing, level k+1 only
    /// to levels up to k.
    pub fn new(items: Vec<Item>) -> anyhow::Result<Plan> {
        let mut by_identifier: HashMap<(String, String, String), usize> = HashMap::new();
        let mut by_full_url: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(first) = item.resource.get("identifier").and_then(|v| v.get(0)) {
                let part = |k: &str| {
                    first
                        .get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                };
                by_identifier.insert(
                    (item.resource_type.clone(), part("system"), part("value")),
                    i,
                );
            }
            if let Some(url) = &item.full_url {
                by_full_url.insert(url.clone(), i);
            }
        }
        let mut refs = Vec::with_capacity(items.len());
        for item in &items {
            let mut found = Vec::new();
            let mut strings = Vec::new();
            references(&item.resource, &mut strings);
            for reference in strings {
                let target = if reference.starts_with("urn:uuid:") {
                    by_full_url.get(&reference).copied()
                } else if let Some(key) = conditional_key(&reference) {
                    by_identifier.get(&key).copied()
                } else {
                    continue; // already Type/id (or external): sent as it is
                };
                let target = target.with_context(|| {
                    format!(
                        "{}: a {} refers to {reference:?}, which no entry of the dry run writes",
                        item.origin, item.resource_type
                    )
                })?;
                found.push((reference, target));
            }
            refs.push(found);
        }
        // levels by longest chain of references (iterative: no recursion depth)
        let mut level: Vec<Option<usize>> = vec![None; items.len()];
        for _round in 0..=items.len() {
            let mut changed = false;
            for i in 0..items.len() {
                if level[i].is_some() {
                    continue;
                }
                let deps: Option<Vec<usize>> = refs[i].iter().map(|(_, t)| level[*t]).collect();
                if let Some(deps) = deps {
                    level[i] = Some(deps.into_iter().map(|l| l + 1).max().unwrap_or(0));
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let mut levels: Vec<Vec<usize>> = Vec::new();
        for (i, l) in level.iter().enumerate() {
            let l = l.with_context(|| {
                format!(
                    "{}: a {} is part of a reference cycle",
                    items[i].origin, items[i].resource_type
                )
            })?;
            if levels.len() <= l {
                levels.resize_with(l + 1, Vec::new);
            }
            levels[l].push(i);
        }
        Ok(Plan {
            items,
            refs,
            levels,
        })
    }

    /// Item `i`'s resource with its references rewritten to `Type/<id>`.
    pub fn resource(&self, i: usize, ids: &[Option<String>]) -> anyhow::Result<Value> {
        let mut resource = self.items[i].resource.clone();
        let mut map = HashMap::new();
        for (reference, target) in &self.refs[i] {
            let id = ids[*target].as_deref().with_context(|| {
                format!("no id for the target of {reference:?} (its level failed)")
            })?;
            map.insert(
                reference.as_str(),
                format!("{}/{id}", self.items[*target].resource_type),
            );
        }
        rewrite(&mut resource, &map);
        Ok(resource)
    }
}

/// Every `reference` string in `value`.
fn references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("reference", Value::String(s)) => out.push(s.clone()),
                    _ => references(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}

/// Replaces `reference` strings found in `map`.
fn rewrite(value: &mut Value, map: &HashMap<&str, String>) {
    match value {
        Value::Object(object) => {
            for (key, v) in object.iter_mut() {
                if key == "reference"
                    && let Value::String(s) = v
                    && let Some(new) = map.get(s.as_str())
                {
                    *s = new.clone();
                } else {
                    rewrite(v, map);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite(v, map)),
        _ => {}
    }
}

/// `Patient?identifier=system|value` (percent-encoded or not, FHIR search
/// escapes undone) as (type, system, value).
fn conditional_key(reference: &str) -> Option<(String, String, String)> {
    let (resource_type, query) = reference.split_once('?')?;
    let raw = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("identifier="))?;
    let decoded = percent_decode(raw);
    // split at the first `|` not escaped by a backslash, then unescape
    let mut system = String::new();
    let mut value = String::new();
    let mut in_value = false;
    let mut chars = decoded.chars();
    while let Some(c) = chars.next() {
        let target = if in_value { &mut value } else { &mut system };
        match c {
            '\\' => target.extend(chars.next()),
            '|' if !in_value => in_value = true,
            c => target.push(c),
        }
    }
    if !in_value {
        std::mem::swap(&mut system, &mut value);
    }
    Some((resource_type.to_owned(), system, value))
}

/// `%XX` escapes (and `+`, as a space in a query) decoded; bad escapes kept.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::{Item, Plan, conditional_key, percent_decode};
    use serde_json::json;

    #[test]
    fn conditional_references_are_read_like_fhir_search() {
        let key = |t: &str, s: &str, v: &str| Some((t.to_owned(), s.to_owned(), v.to_owned()));
        assert_eq!(
            conditional_key("Patient?identifier=http://s|P1"),
            key("Patient", "http://s", "P1")
        );
        assert_eq!(
            conditional_key("Patient?identifier=http%3A%2F%2Fs%7CP1"),
            key("Patient", "http://s", "P1")
        );
        assert_eq!(
            conditional_key("Patient?identifier=s|B\\,1\\|x"),
            key("Patient", "s", "B,1|x")
        );
        assert_eq!(
            conditional_key("Patient?identifier=P1"),
            key("Patient", "", "P1")
        );
        assert_eq!(conditional_key("Patient/123"), None);
        assert_eq!(percent_decode("a%zz%41+b"), "a%zzA b");
    }

    #[test]
    fn levels_follow_references() {
        let item = |resource: serde_json::Value, full_url: Option<&str>| Item {
            resource_type: resource["resourceType"].as_str().unwrap_or("").to_owned(),
            resource,
            full_url: full_url.map(str::to_owned),
            origin: "test".into(),
        };
        let plan = Plan::new(vec![
            item(json!({"resourceType": "ClinicalImpression",
                        "subject": {"reference": "Patient?identifier=s|1"},
                        "encounter": {"reference": "urn:uuid:e"}}), None),
            item(json!({"resourceType": "Encounter", "subject": {"reference": "Patient?identifier=s|1"}}), Some("urn:uuid:e")),
            item(json!({"resourceType": "Patient", "identifier": [{"system": "s", "value": "1"}]}), None),
        ])
        .unwrap();
        assert_eq!(plan.levels, vec![vec![2], vec![1], vec![0]]);
        let ids = vec![None, Some("E1".to_owned()), Some("P1".to_owned())];
        let ci = plan.resource(0, &ids).unwrap();
        assert_eq!(ci["subject"]["reference"], "Patient/P1");
        assert_eq!(ci["encounter"]["reference"], "Encounter/E1");
        let dangling = Plan::new(vec![item(
            json!({"resourceType": "Condition", "subject": {"reference": "Patient?identifier=s|9"}}),
            None,
        )]);
        assert!(dangling.is_err());
    }
}
