//! A resource checked against FHIR R4's structure: resource types and
//! element names (choice types, `_element` siblings of primitives,
//! contained resources, nested backbone elements), JSON types and the
//! primitive formats, cardinality, the codes of required bindings on
//! `code` elements, and the resource types references may point at.
//! Codes outside an extensible or preferred binding are information
//! ([`Severity::Information`]): reported, never a reason to refuse.
//!
//! Each finding is an [`Issue`]: its rule, a FHIRPath-style location
//! (`Patient.name[0].given[1]`) and a message that never quotes the
//! value (locations and rules go to logs; values are patient data).

use serde_json::{Map, Value};

use crate::definitions::{Definitions, ElementDef, Kind, TypeDef, r4};
use crate::primitives;

/// What an issue is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// `resourceType` is missing or not an R4 resource type.
    UnknownResourceType,
    /// A key that is no element of its type.
    UnknownElement,
    /// A value of the wrong JSON type (a string where an object goes).
    WrongType,
    /// A primitive that does not read as its type (`date`, `id`, ...).
    BadFormat,
    /// A required element is missing.
    Required,
    /// A list where one value goes, or one value where a list goes.
    Cardinality,
    /// An empty string, list or object (FHIR has no empty values).
    Empty,
    /// A code outside the value set a required binding names.
    CodeNotInValueSet,
    /// A reference to a resource type the element does not allow.
    ReferenceTarget,
    /// A `urn:uuid:` reference that names no entry of its bundle.
    UnresolvedReference,
    /// A code outside the value set of an extensible or preferred binding:
    /// information, never a reason to refuse.
    AdvisoryBinding,
}

/// How much an issue weighs, as an OperationOutcome's `issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// Not valid R4: refused under `target.validate: reject`.
    Error,
    /// Valid, worth knowing: counted and shown, never refused.
    Information,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Information => "information",
        }
    }
}

impl Rule {
    /// The rule's name, for logs and grouped reports.
    pub fn name(self) -> &'static str {
        match self {
            Rule::UnknownResourceType => "unknown-resource-type",
            Rule::UnknownElement => "unknown-element",
            Rule::WrongType => "wrong-type",
            Rule::BadFormat => "bad-format",
            Rule::Required => "required",
            Rule::Cardinality => "cardinality",
            Rule::Empty => "empty",
            Rule::CodeNotInValueSet => "code-not-in-value-set",
            Rule::ReferenceTarget => "reference-target",
            Rule::UnresolvedReference => "unresolved-reference",
            Rule::AdvisoryBinding => "advisory-binding",
        }
    }

    /// Whether it makes a resource invalid.
    pub fn severity(self) -> Severity {
        match self {
            Rule::AdvisoryBinding => Severity::Information,
            _ => Severity::Error,
        }
    }
}

/// One finding about a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub rule: Rule,
    /// FHIRPath-style: `Patient.name[0].given[1]`.
    pub location: String,
    /// What is wrong and what is expected, without the value.
    pub message: String,
}

impl Issue {
    pub fn severity(&self) -> Severity {
        self.rule.severity()
    }

    /// Whether the resource is invalid because of it.
    pub fn is_error(&self) -> bool {
        self.severity() == Severity::Error
    }

    /// The location with list positions folded (`Patient.name[].given[]`):
    /// one rule at one place counts as one kind of issue, whichever item.
    pub fn place(&self) -> String {
        let mut out = String::with_capacity(self.location.len());
        let mut in_index = false;
        for c in self.location.chars() {
            match c {
                '[' => {
                    in_index = true;
                    out.push_str("[]");
                }
                ']' => in_index = false,
                c if !in_index => out.push(c),
                _ => {}
            }
        }
        out
    }
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let severity = match self.severity() {
            Severity::Error => "",
            Severity::Information => "information: ",
        };
        write!(
            f,
            "{severity}{} [{}]: {}",
            self.location,
            self.rule.name(),
            self.message
        )
    }
}

/// Every issue of one resource (none when it is valid R4).
pub fn validate(resource: &Value) -> Vec<Issue> {
    let mut walker = Walker {
        defs: r4(),
        issues: Vec::new(),
        path: String::with_capacity(64),
    };
    walker.resource(resource);
    walker.issues
}

/// The `urn:uuid:` references of a bundle's entries (each its `fullUrl`,
/// if any, and its resource) that name no entry's `fullUrl`: with the
/// entry's index.
pub fn unresolved_references(entries: &[(Option<&str>, &Value)]) -> Vec<(usize, Issue)> {
    let full_urls: std::collections::HashSet<&str> =
        entries.iter().filter_map(|(url, _)| *url).collect();
    let mut out = Vec::new();
    for (i, (_, resource)) in entries.iter().enumerate() {
        let root = resource["resourceType"].as_str().unwrap_or("resource");
        let mut found = Vec::new();
        urn_references(resource, &mut root.to_owned(), &mut found);
        for (location, urn) in found {
            if !full_urls.contains(urn) {
                out.push((
                    i,
                    Issue {
                        rule: Rule::UnresolvedReference,
                        location,
                        message: "a urn:uuid reference names no resource of the same bundle (an entry's fullUrl)".into(),
                    },
                ));
            }
        }
    }
    out
}

/// Every `reference` that is a `urn:uuid:`, with its FHIRPath location;
/// `at` is the path so far, one buffer for the whole walk.
fn urn_references<'v>(value: &'v Value, at: &mut String, out: &mut Vec<(String, &'v str)>) {
    let back = at.len();
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                at.push('.');
                at.push_str(key);
                match v.as_str() {
                    Some(text) if key == "reference" && text.starts_with("urn:uuid:") => {
                        out.push((at.clone(), text));
                    }
                    Some(_) => {}
                    None => urn_references(v, at, out),
                }
                at.truncate(back);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                use std::fmt::Write as _;
                let _ = write!(at, "[{i}]");
                urn_references(item, at, out);
                at.truncate(back);
            }
        }
        _ => {}
    }
}

/// Walks a resource, keeping the FHIRPath of where it is in one buffer:
/// a location string is built only for an issue.
struct Walker {
    defs: &'static Definitions,
    issues: Vec<Issue>,
    /// Where the walk is: `Patient.name[0].given`.
    path: String,
}

impl Walker {
    /// An issue at the current place.
    fn issue(&mut self, rule: Rule, message: String) {
        self.issues.push(Issue {
            rule,
            location: self.path.clone(),
            message,
        });
    }

    /// An issue at `.child` of the current place.
    fn issue_below(&mut self, rule: Rule, child: &str, message: String) {
        self.issues.push(Issue {
            rule,
            location: format!("{}.{child}", self.path),
            message,
        });
    }

    /// Steps into `.key`; returns the length to truncate back to.
    fn enter_key(&mut self, key: &str) -> usize {
        let back = self.path.len();
        self.path.push('.');
        self.path.push_str(key);
        back
    }

    /// Steps into `[i]`; returns the length to truncate back to.
    fn enter_index(&mut self, i: usize) -> usize {
        use std::fmt::Write as _;
        let back = self.path.len();
        let _ = write!(self.path, "[{i}]");
        back
    }

    /// A resource, at the root (the path is empty) or contained.
    fn resource(&mut self, value: &Value) {
        let root = self.path.is_empty();
        let Some(object) = value.as_object() else {
            if root {
                self.path.push_str("resource");
            }
            self.issue(Rule::WrongType, "a resource is a JSON object".into());
            return;
        };
        let type_name = object.get("resourceType").and_then(Value::as_str);
        let Some((name, def)) = type_name
            .and_then(|n| self.defs.get(n).map(|d| (n, d)))
            .filter(|(_, d)| d.kind == Kind::Resource)
        else {
            if root {
                self.path.push_str("resource");
            }
            let message = match type_name {
                None => "resourceType is missing: every resource names its type".into(),
                Some(t) => format!(
                    "{t} is not an R4 resource type{}",
                    nearest_hint(
                        t,
                        self.defs
                            .types
                            .iter()
                            .filter(|(_, d)| d.kind == Kind::Resource)
                            .map(|(n, _)| n.as_str())
                    )
                ),
            };
            self.issue_below(Rule::UnknownResourceType, "resourceType", message);
            return;
        };
        if root {
            self.path.push_str(name);
        }
        self.object(object, def, true);
    }

    /// The elements of an object of type `def`.
    fn object(&mut self, object: &Map<String, Value>, def: &'static TypeDef, is_resource: bool) {
        if object.is_empty() {
            self.issue(Rule::Empty, "an empty object: leave the element out".into());
            return;
        }
        for (key, value) in object {
            if is_resource && key == "resourceType" {
                continue;
            }
            if let Some(base) = key.strip_prefix('_') {
                // a primitive's id and extensions
                match find_element(def, base) {
                    Some((_, t)) if self.is_primitive(t) => {}
                    _ => self.issue_below(
                        Rule::UnknownElement,
                        key,
                        format!("{key} extends a primitive element {base}, which this type does not have"),
                    ),
                }
                continue;
            }
            let Some((element, type_name)) = find_element(def, key) else {
                // choice elements by each of their names (valueString, ...)
                let known: Vec<String> = def
                    .elements
                    .iter()
                    .flat_map(|e| e.json_names().into_iter().map(|(name, _)| name))
                    .collect();
                self.issue_below(
                    Rule::UnknownElement,
                    key,
                    format!(
                        "{key} is not an element here{}",
                        nearest_hint(key, known.iter().map(String::as_str))
                    ),
                );
                continue;
            };
            let back = self.enter_key(key);
            self.element(value, element, type_name);
            self.path.truncate(back);
        }
        for element in def.elements.iter().filter(|e| e.min > 0) {
            let present = match element.choice_stem() {
                Some(stem) => object.keys().any(|k| {
                    k.strip_prefix(stem)
                        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
                }),
                None => {
                    object.contains_key(&element.name)
                        || object
                            .keys()
                            .any(|k| k.strip_prefix('_') == Some(element.name.as_str()))
                }
            };
            if !present {
                self.issue_below(
                    Rule::Required,
                    &element.name,
                    format!("{} is required", element.name),
                );
            }
        }
    }

    /// An element's value: one, or a list, by its cardinality.
    fn element(&mut self, value: &Value, element: &'static ElementDef, type_name: &'static str) {
        match value {
            Value::Array(items) if element.is_list() => {
                if items.is_empty() {
                    self.issue(Rule::Empty, "an empty list: leave the element out".into());
                }
                if let Some(max) = element.max
                    && items.len() > max as usize
                {
                    self.issue(Rule::Cardinality, format!("at most {max} values"));
                }
                for (i, item) in items.iter().enumerate() {
                    let back = self.enter_index(i);
                    self.typed(item, element, type_name);
                    self.path.truncate(back);
                }
            }
            Value::Array(_) => self.issue(Rule::Cardinality, "one value, not a list".into()),
            one if element.is_list() => {
                self.issue(Rule::Cardinality, "a list (write [value])".into());
                self.typed(one, element, type_name);
            }
            one => self.typed(one, element, type_name),
        }
    }

    fn is_primitive(&self, type_name: &str) -> bool {
        self.defs
            .get(type_name)
            .is_some_and(|d| d.kind == Kind::Primitive)
    }

    /// One value of a known type.
    fn typed(&mut self, value: &Value, element: &'static ElementDef, type_name: &'static str) {
        let def = self.defs.get(type_name);
        if type_name == "Resource" || def.is_some_and(|d| d.kind == Kind::Resource) {
            self.resource(value);
            return;
        }
        let Some(def) = def else {
            return; // a type the definitions do not describe (xhtml's div)
        };
        if def.kind == Kind::Primitive {
            if let Err(why) = primitives::check(type_name, value) {
                let rule = if why.wrong_json {
                    Rule::WrongType
                } else {
                    Rule::BadFormat
                };
                self.issue(rule, why.message);
                return;
            }
            if type_name == "code"
                && let Some(code) = value.as_str()
            {
                if let Some(url) = &element.binding {
                    if let Some(codes) = self.defs.codes(element, 0)
                        && !contains(codes, code)
                    {
                        let shown: Vec<&str> = codes.iter().take(12).map(String::as_str).collect();
                        let more = if codes.len() > 12 { ", ..." } else { "" };
                        self.issue(
                            Rule::CodeNotInValueSet,
                            format!("not a code of {url} ({}{more})", shown.join(", ")),
                        );
                    }
                } else {
                    self.advisory(element, [code].into_iter());
                }
            }
            return;
        }
        let Some(object) = value.as_object() else {
            self.issue(Rule::WrongType, format!("a {type_name} is a JSON object"));
            return;
        };
        self.object(object, def, false);
        match type_name {
            "Reference" if !element.targets.is_empty() => {
                self.reference_target(object, element);
            }
            "Coding" if element.advisory.is_some() => {
                let code = object.get("code").and_then(Value::as_str);
                self.advisory(element, code.into_iter());
            }
            "CodeableConcept" if element.advisory.is_some() => {
                let codes = object
                    .get("coding")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.get("code").and_then(Value::as_str));
                self.advisory(element, codes);
            }
            _ => {}
        }
    }

    /// Information when none of `codes` (a code, or a concept's codings)
    /// is in the value set of the element's extensible or preferred
    /// binding, when the definitions expand it. No codes: nothing to say.
    fn advisory<'v>(&mut self, element: &ElementDef, mut codes: impl Iterator<Item = &'v str>) {
        let Some(advisory) = &element.advisory else {
            return;
        };
        let Some(known) = self.defs.codes(element, 1) else {
            return;
        };
        let Some(first) = codes.next() else {
            return;
        };
        if contains(known, first) || codes.any(|c| contains(known, c)) {
            return;
        }
        self.issue(
            Rule::AdvisoryBinding,
            format!(
                "no code of {} (a {} binding: information, not refused)",
                advisory.value_set, advisory.strength
            ),
        );
    }

    /// The type a reference names, against the element's targets.
    fn reference_target(&mut self, reference: &Map<String, Value>, element: &ElementDef) {
        let Some(text) = reference.get("reference").and_then(Value::as_str) else {
            return;
        };
        if text.starts_with("urn:") || text.starts_with('#') {
            return; // inside the bundle or contained: checked where they are
        }
        let path = text.split(['?', '#']).next().unwrap_or(text);
        let segments: Vec<&str> = path.split('/').collect();
        let named = if text.contains('?') {
            segments.last().copied()
        } else {
            segments.iter().rev().nth(1).copied()
        };
        let Some(named) = named.filter(|n| self.defs.is_resource(n)) else {
            return;
        };
        if !element.targets.iter().any(|t| t == named) {
            self.issue_below(
                Rule::ReferenceTarget,
                "reference",
                format!(
                    "refers to a {named}; this element refers to {}",
                    element.targets.join(" or ")
                ),
            );
        }
    }
}

/// The element a key names, and the type it has there: `valueQuantity`
/// is `value[x]` as a Quantity.
fn find_element<'d>(def: &'d TypeDef, key: &str) -> Option<(&'d ElementDef, &'d str)> {
    if let Some(e) = def.elements.iter().find(|e| e.name == key) {
        return e.types.first().map(|t| (e, t.as_str()));
    }
    def.elements.iter().find_map(|e| {
        let rest = key.strip_prefix(e.choice_stem()?)?;
        e.types
            .iter()
            .find(|t| is_capitalized(t, rest))
            .map(|t| (e, t.as_str()))
    })
}

/// Whether a sorted list of codes holds `code`.
fn contains(codes: &[String], code: &str) -> bool {
    codes.binary_search_by(|c| c.as_str().cmp(code)).is_ok()
}

/// Whether `key_part` is `type_name` with its first letter upper case
/// (`Quantity` for `Quantity`, `DateTime` for `dateTime`), without allocating.
fn is_capitalized(type_name: &str, key_part: &str) -> bool {
    let (Some(t), Some(k)) = (type_name.chars().next(), key_part.chars().next()) else {
        return false;
    };
    t.to_ascii_uppercase() == k && type_name[t.len_utf8()..] == key_part[k.len_utf8()..]
}

/// `: did you mean X?` for the nearest of `known`, when one is near.
fn nearest_hint<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> String {
    fhirlift_core::spelling::nearest(name, known)
        .map(|n| format!(": did you mean {n}?"))
        .unwrap_or_default()
}
