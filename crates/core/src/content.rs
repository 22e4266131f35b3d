//! Whether what a server stores is what fhirlift would write: the one
//! comparison the resolve strategy (skip an unchanged write) and `verify`
//! (equal or drifted) share, and the reference rewriting both do first
//! (conditional references and a group's `urn:uuid`s to stored ids).
//!
//! What a server adds is ignored: `id`, `meta` beyond what the new content
//! sets, a `display` on a reference the new content sent without one.
//! Numbers compare by value (`1.0` equals `1`). A field the server holds
//! and the new content lacks is a difference.

use serde_json::{Map, Value};

use crate::group::{Identity, parse_conditional_url};

/// Which of `wanted` a stored resource of `resource_type` holds among its
/// identifiers (each once): how a search's results are matched back to
/// the identities searched for.
pub fn held_identities(
    resource: &Value,
    resource_type: &str,
    wanted: &std::collections::HashSet<&Identity>,
) -> Vec<Identity> {
    let mut matched: Vec<Identity> = Vec::new();
    for identifier in resource["identifier"].as_array().into_iter().flatten() {
        let candidate = Identity {
            resource_type: resource_type.to_owned(),
            system: identifier["system"].as_str().unwrap_or("").to_owned(),
            value: identifier["value"].as_str().unwrap_or("").to_owned(),
        };
        if wanted.contains(&candidate) && !matched.contains(&candidate) {
            matched.push(candidate);
        }
    }
    matched
}

/// Every conditional reference (`Type?identifier=s|v`) in a resource, each
/// identity once.
pub fn conditional_references(value: &Value, out: &mut Vec<Identity>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("reference", Value::String(r)) => {
                        if let Some(id) = parse_conditional_url(r)
                            && !out.contains(&id)
                        {
                            out.push(id);
                        }
                    }
                    _ => conditional_references(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| conditional_references(v, out)),
        _ => {}
    }
}

/// Rewrites every `reference` for which `target` has a replacement (a
/// conditional one to `Type/id`, a `urn:uuid` to a stored member).
pub fn rewrite_references(value: &mut Value, target: &dyn Fn(&str) -> Option<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "reference"
                    && let Value::String(r) = v
                {
                    if let Some(t) = target(r) {
                        *r = t;
                    }
                } else {
                    rewrite_references(v, target);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_references(v, target)),
        _ => {}
    }
}

/// What the target holds once `amendment` goes onto `stored`
/// ([`crate::group::Operation::amends`]): each top-level element of the
/// amendment replaces the stored one, except a list, which gains the
/// amendment's items it lacks (compared by [`same_content`], so a reference
/// the server gave a `display` still matches; an identifier by its system
/// and value). Applying the same amendment
/// twice gives what applying it once gave. `id` and `meta` stay the
/// stored ones.
pub fn amend(stored: &Value, amendment: &Value) -> Value {
    let mut out = stored.clone();
    let (Some(to), Some(from)) = (out.as_object_mut(), amendment.as_object()) else {
        return amendment.clone();
    };
    for (key, value) in from {
        if matches!(key.as_str(), "resourceType" | "id" | "meta") {
            continue;
        }
        match (to.get_mut(key), value) {
            (Some(Value::Array(held)), Value::Array(items)) => {
                for item in items {
                    let holds = |h: &Value| match (item, h) {
                        // an identifier is held when its system and value are
                        (Value::Object(_), Value::Object(_)) if key == "identifier" => {
                            item.get("system") == h.get("system")
                                && item.get("value") == h.get("value")
                        }
                        (Value::Object(_), Value::Object(_)) => same_content(item, h),
                        _ => item == h,
                    };
                    if !held.iter().any(holds) {
                        held.push(item.clone());
                    }
                }
            }
            _ => {
                to.insert(key.clone(), value.clone());
            }
        }
    }
    out
}

/// Whether `stored` already holds `new`'s content.
pub fn same_content(new: &Value, stored: &Value) -> bool {
    let mut walk = Walk {
        paths: Vec::new(),
        all: false,
    };
    walk.top(new, stored);
    walk.paths.is_empty()
}

/// The FHIRPath-style places (`name[0].family`) where `stored` differs
/// from `new`, in document order: empty when the content is the same.
pub fn differences(new: &Value, stored: &Value) -> Vec<String> {
    let mut walk = Walk {
        paths: Vec::new(),
        all: true,
    };
    walk.top(new, stored);
    walk.paths
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Top,
    Meta,
    Inner,
}

struct Walk {
    paths: Vec<String>,
    /// Every difference, or stop at the first.
    all: bool,
}

impl Walk {
    fn done(&self) -> bool {
        !self.all && !self.paths.is_empty()
    }

    fn top(&mut self, new: &Value, stored: &Value) {
        match (new.as_object(), stored.as_object()) {
            (Some(n), Some(s)) => self.object(n, s, Level::Top, ""),
            _ => self.paths.push(String::new()),
        }
    }

    fn object(
        &mut self,
        new: &Map<String, Value>,
        stored: &Map<String, Value>,
        level: Level,
        at: &str,
    ) {
        let is_reference = new.contains_key("reference");
        let here = |k: &str| {
            if at.is_empty() {
                k.to_owned()
            } else {
                format!("{at}.{k}")
            }
        };
        for (k, v) in new {
            if self.done() {
                return;
            }
            if level == Level::Top && k == "id" {
                continue;
            }
            let Some(s) = stored.get(k) else {
                self.paths.push(here(k));
                continue;
            };
            let inner = if level == Level::Top && k == "meta" {
                Level::Meta
            } else {
                Level::Inner
            };
            self.value(v, s, inner, &here(k));
        }
        for k in stored.keys() {
            if self.done() {
                return;
            }
            let ignored = new.contains_key(k)
                || level == Level::Meta
                || (level == Level::Top && (k == "id" || k == "meta"))
                || (is_reference && k == "display");
            if !ignored {
                self.paths.push(here(k));
            }
        }
    }

    fn value(&mut self, new: &Value, stored: &Value, level: Level, at: &str) {
        match (new, stored) {
            (Value::Object(n), Value::Object(s)) => self.object(n, s, level, at),
            (Value::Array(n), Value::Array(s)) if n.len() == s.len() => {
                for (i, (a, b)) in n.iter().zip(s).enumerate() {
                    if self.done() {
                        return;
                    }
                    self.value(a, b, Level::Inner, &format!("{at}[{i}]"));
                }
            }
            (Value::Number(a), Value::Number(b)) if a == b || a.as_f64() == b.as_f64() => {}
            _ if new == stored => {}
            _ => self.paths.push(at.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_amendment_keeps_what_it_does_not_name_and_applies_once() {
        let stored = json!({
            "resourceType": "Patient", "id": "p1", "meta": { "versionId": "3" },
            "identifier": [{ "system": "s", "value": "1" }],
            "name": [{ "family": "Kept" }],
            "active": true,
            "link": [{ "other": { "reference": "Patient/p0", "display": "x" }, "type": "seealso" }]
        });
        let amendment = json!({
            "resourceType": "Patient",
            "identifier": [{ "system": "s", "value": "1", "use": "old" }],
            "active": false,
            "link": [
                { "other": { "reference": "Patient/p0" }, "type": "seealso" },
                { "other": { "reference": "Patient/p2" }, "type": "replaced-by" }
            ]
        });
        let once = amend(&stored, &amendment);
        assert_eq!(
            once,
            json!({
                "resourceType": "Patient", "id": "p1", "meta": { "versionId": "3" },
                "identifier": [{ "system": "s", "value": "1" }],
                "name": [{ "family": "Kept" }],
                "active": false,
                "link": [
                    { "other": { "reference": "Patient/p0", "display": "x" }, "type": "seealso" },
                    { "other": { "reference": "Patient/p2" }, "type": "replaced-by" }
                ]
            })
        );
        assert!(!same_content(&once, &stored));
        assert_eq!(amend(&once, &amendment), once, "twice is once");
        assert!(same_content(&amend(&once, &amendment), &once));
    }

    #[test]
    fn stored_content_ignores_what_the_server_adds() {
        let new = json!({
            "resourceType": "Condition",
            "identifier": [{ "system": "s", "value": "1" }],
            "subject": { "reference": "Patient/abc" },
            "onsetDateTime": "2020-01-01",
            "meta": { "tag": [{ "code": "migrated" }] }
        });
        let stored = json!({
            "resourceType": "Condition",
            "id": "xyz",
            "meta": { "versionId": "3", "lastUpdated": "2026-01-01T00:00:00Z", "project": "p", "tag": [{ "code": "migrated" }] },
            "identifier": [{ "system": "s", "value": "1" }],
            "subject": { "reference": "Patient/abc", "display": "Ann Lee" },
            "onsetDateTime": "2020-01-01"
        });
        assert!(same_content(&new, &stored));
        assert!(differences(&new, &stored).is_empty());
        let mut changed = new.clone();
        changed["onsetDateTime"] = json!("2020-01-02");
        assert!(!same_content(&changed, &stored));
        // a field the server holds and the new content drops is a change
        let mut dropped = stored.clone();
        dropped["note"] = json!([{ "text": "x" }]);
        assert!(!same_content(&new, &dropped));
        // a display the mapping set itself must match
        let mut with_display = new.clone();
        with_display["subject"]["display"] = json!("Someone else");
        assert!(!same_content(&with_display, &stored));
        assert!(same_content(&json!({ "n": 1.0 }), &json!({ "n": 1 })));
    }

    #[test]
    fn differences_name_every_place_that_differs() {
        let new = json!({ "resourceType": "Patient", "gender": "female",
            "name": [{ "family": "Lee", "given": ["Ann"] }], "birthDate": "1980-01-01" });
        let stored = json!({ "resourceType": "Patient", "id": "1", "gender": "female",
            "name": [{ "family": "Li", "given": ["Ann", "B"] }], "active": true });
        assert_eq!(
            differences(&new, &stored),
            ["name[0].family", "name[0].given", "birthDate", "active"]
        );
        assert_eq!(differences(&json!({}), &json!([])), [""]);
    }
}
