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
    };
    walker.resource(resource, None);
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
        urn_references(resource, root, &mut found);
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

/// Every `reference` that is a `urn:uuid:`, with its FHIRPath location.
fn urn_references<'v>(value: &'v Value, at: &str, out: &mut Vec<(String, &'v str)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let here = format!("{at}.{key}");
                match v.as_str() {
                    Some(text) if key == "reference" && text.starts_with("urn:uuid:") => {
                        out.push((here, text));
                    }
                    _ => urn_references(v, &here, out),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                urn_references(item, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

struct Walker {
    defs: &'static Definitions,
    issues: Vec<Issue>,
}

impl Walker {
    fn issue(&mut self, rule: Rule, location: &str, message: String) {
        self.issues.push(Issue {
            rule,
            location: location.to_owned(),
            message,
        });
    }

    /// A resource, at the root (`at` is `None`) or contained.
    fn resource(&mut self, value: &Value, at: Option<&str>) {
        let Some(object) = value.as_object() else {
            let location = at.unwrap_or("resource");
            self.issue(
                Rule::WrongType,
                location,
                "a resource is a JSON object".into(),
            );
            return;
        };
        let type_name = object.get("resourceType").and_then(Value::as_str);
        let Some((name, def)) = type_name
            .and_then(|n| self.defs.get(n).map(|d| (n, d)))
            .filter(|(_, d)| d.kind == Kind::Resource)
        else {
            let location = at.unwrap_or("resource");
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
            self.issue(
                Rule::UnknownResourceType,
                &format!("{location}.resourceType"),
                message,
            );
            return;
        };
        let location = at.map_or_else(|| name.to_owned(), str::to_owned);
        self.object(object, def, &location, true);
    }

    /// The elements of an object of type `def`.
    fn object(
        &mut self,
        object: &Map<String, Value>,
        def: &'static TypeDef,
        at: &str,
        is_resource: bool,
    ) {
        if object.is_empty() {
            self.issue(
                Rule::Empty,
                at,
                "an empty object: leave the element out".into(),
            );
            return;
        }
        for (key, value) in object {
            if is_resource && key == "resourceType" {
                continue;
            }
            let location = format!("{at}.{key}");
            if let Some(base) = key.strip_prefix('_') {
                // a primitive's id and extensions
                match find_element(def, base) {
                    Some((_, t)) if self.is_primitive(t) => {}
                    _ => self.issue(
                        Rule::UnknownElement,
                        &location,
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
                    .flat_map(|e| match e.choice_stem() {
                        Some(stem) => e
                            .types
                            .iter()
                            .map(|t| format!("{stem}{}", capitalized(t)))
                            .collect(),
                        None => vec![e.name.clone()],
                    })
                    .collect();
                self.issue(
                    Rule::UnknownElement,
                    &location,
                    format!(
                        "{key} is not an element here{}",
                        nearest_hint(key, known.iter().map(String::as_str))
                    ),
                );
                continue;
            };
            self.element(value, element, type_name, &location);
        }
        for element in def.elements.iter().filter(|e| e.min > 0) {
            let present = match element.choice_stem() {
                Some(stem) => object.keys().any(|k| {
                    k.strip_prefix(stem)
                        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
                }),
                None => {
                    object.contains_key(&element.name)
                        || object.contains_key(&format!("_{}", element.name))
                }
            };
            if !present {
                self.issue(
                    Rule::Required,
                    &format!("{at}.{}", element.name),
                    format!("{} is required", element.name),
                );
            }
        }
    }

    /// An element's value: one, or a list, by its cardinality.
    fn element(
        &mut self,
        value: &Value,
        element: &'static ElementDef,
        type_name: &'static str,
        at: &str,
    ) {
        match value {
            Value::Array(items) if element.is_list() => {
                if items.is_empty() {
                    self.issue(
                        Rule::Empty,
                        at,
                        "an empty list: leave the element out".into(),
                    );
                }
                if let Some(max) = element.max
                    && items.len() > max as usize
                {
                    self.issue(Rule::Cardinality, at, format!("at most {max} values"));
                }
                for (i, item) in items.iter().enumerate() {
                    self.typed(item, element, type_name, &format!("{at}[{i}]"));
                }
            }
            Value::Array(_) => self.issue(Rule::Cardinality, at, "one value, not a list".into()),
            one if element.is_list() => {
                self.issue(Rule::Cardinality, at, "a list (write [value])".into());
                self.typed(one, element, type_name, at);
            }
            one => self.typed(one, element, type_name, at),
        }
    }

    fn is_primitive(&self, type_name: &str) -> bool {
        self.defs
            .get(type_name)
            .is_some_and(|d| d.kind == Kind::Primitive)
    }

    /// One value of a known type.
    fn typed(
        &mut self,
        value: &Value,
        element: &'static ElementDef,
        type_name: &'static str,
        at: &str,
    ) {
        if type_name == "Resource" || self.defs.is_resource(type_name) {
            self.resource(value, Some(at));
            return;
        }
        let Some(def) = self.defs.get(type_name) else {
            return; // a type the definitions do not describe (xhtml's div)
        };
        if def.kind == Kind::Primitive {
            if let Err(why) = primitives::check(type_name, value) {
                let rule = if why.wrong_json {
                    Rule::WrongType
                } else {
                    Rule::BadFormat
                };
                self.issue(rule, at, why.message);
                return;
            }
            if type_name == "code"
                && let Some(code) = value.as_str()
            {
                if let Some(url) = &element.binding {
                    if let Some(codes) = self.defs.value_sets.get(url)
                        && !contains(codes, code)
                    {
                        let shown: Vec<&str> = codes.iter().take(12).map(String::as_str).collect();
                        let more = if codes.len() > 12 { ", ..." } else { "" };
                        self.issue(
                            Rule::CodeNotInValueSet,
                            at,
                            format!("not a code of {url} ({}{more})", shown.join(", ")),
                        );
                    }
                } else {
                    self.advisory(element, [code].into_iter(), at);
                }
            }
            return;
        }
        let Some(object) = value.as_object() else {
            self.issue(
                Rule::WrongType,
                at,
                format!("a {type_name} is a JSON object"),
            );
            return;
        };
        self.object(object, def, at, false);
        match type_name {
            "Reference" if !element.targets.is_empty() => {
                self.reference_target(object, element, at);
            }
            "Coding" if element.advisory.is_some() => {
                let code = object.get("code").and_then(Value::as_str);
                self.advisory(element, code.into_iter(), at);
            }
            "CodeableConcept" if element.advisory.is_some() => {
                let codes = object
                    .get("coding")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.get("code").and_then(Value::as_str));
                self.advisory(element, codes, at);
            }
            _ => {}
        }
    }

    /// Information when none of `codes` (a code, or a concept's codings)
    /// is in the value set of the element's extensible or preferred
    /// binding, when the definitions expand it. No codes: nothing to say.
    fn advisory<'v>(
        &mut self,
        element: &ElementDef,
        mut codes: impl Iterator<Item = &'v str>,
        at: &str,
    ) {
        let Some(advisory) = &element.advisory else {
            return;
        };
        let Some(known) = self.defs.value_sets.get(&advisory.value_set) else {
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
            at,
            format!(
                "no code of {} (a {} binding: information, not refused)",
                advisory.value_set, advisory.strength
            ),
        );
    }

    /// The type a reference names, against the element's targets.
    fn reference_target(&mut self, reference: &Map<String, Value>, element: &ElementDef, at: &str) {
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
            self.issue(
                Rule::ReferenceTarget,
                &format!("{at}.reference"),
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
            .find(|t| capitalized(t) == rest)
            .map(|t| (e, t.as_str()))
    })
}

/// Whether a sorted list of codes holds `code`.
fn contains(codes: &[String], code: &str) -> bool {
    codes.binary_search_by(|c| c.as_str().cmp(code)).is_ok()
}

fn capitalized(type_name: &str) -> String {
    let mut chars = type_name.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// `: did you mean X?` for the nearest of `known`, when one is near.
fn nearest_hint<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> String {
    fhirlift_core::spelling::nearest(name, known)
        .map(|n| format!(": did you mean {n}?"))
        .unwrap_or_default()
}
