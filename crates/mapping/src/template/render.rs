//! Rendering a compiled template for one record: the scope expressions
//! see (the record, its lookup rows, the stream's vars and locals), and
//! the writing of JSON bytes with empty fields dropped.

use std::sync::{Arc, OnceLock};

use minijinja::value::{Object, Value as Mj};

use super::*;

/// One record's values, as expressions see them.
pub(crate) struct Scope<'a> {
    pub record: &'a Arc<Record>,
    pub lookups: &'a [Option<Arc<Vec<Value>>>],
    pub locals: &'a [String],
    pub shared: &'a Arc<ScopeShared>,
    /// The segment a `for_each` iteration stands on.
    pub segment: Option<usize>,
    mj: OnceLock<Mj>,
}

/// What every record of a stream shares in its expression context.
pub(crate) struct ScopeShared {
    pub vars: Vec<(String, Mj)>,
    pub lookups: Vec<Arc<LookupTable>>,
    /// The stream's `as:` names, in the order of a record's local urn:uuids.
    pub local_names: Vec<String>,
    /// Each registered function family's settings for this stream.
    pub function_settings: Arc<Vec<(&'static str, fhirlift_core::functions::FunctionSettings)>>,
}

impl ScopeShared {
    /// From the mapping's vars (made minijinja values once), the stream's
    /// lookups, its `as:` names and its function families' settings.
    pub fn new(
        vars: &[(String, serde_json::Value)],
        lookups: Vec<Arc<LookupTable>>,
        local_names: Vec<String>,
        function_settings: Vec<(&'static str, fhirlift_core::functions::FunctionSettings)>,
    ) -> ScopeShared {
        ScopeShared {
            vars: vars
                .iter()
                .map(|(n, v)| (n.clone(), Mj::from(minijinja::value::Serde(v))))
                .collect(),
            lookups,
            local_names,
            function_settings: Arc::new(function_settings),
        }
    }
}

impl<'a> Scope<'a> {
    pub fn new(
        record: &'a Arc<Record>,
        lookups: &'a [Option<Arc<Vec<Value>>>],
        locals: &'a [String],
        shared: &'a Arc<ScopeShared>,
    ) -> Self {
        Scope {
            record,
            lookups,
            locals,
            shared,
            segment: None,
            mj: OnceLock::new(),
        }
    }

    /// The minijinja context, built on first use only.
    fn context(&self) -> Mj {
        self.mj
            .get_or_init(|| {
                Mj::from_object(RecordObject {
                    record: self.record.clone(),
                    lookups: self.lookups.to_vec(),
                    locals: self.locals.to_vec(),
                    shared: self.shared.clone(),
                    segment: self.segment,
                })
            })
            .clone()
    }
}

pub(crate) fn value_to_mj(v: &Value) -> Mj {
    match v {
        Value::Null => Mj::from(()),
        Value::Text(s) => Mj::from(s.as_str()),
        Value::Integer(i) => Mj::from(*i),
        Value::Decimal(d) => Mj::from(d.as_str()),
        Value::Bool(b) => Mj::from(*b),
        Value::Json(j) => Mj::from(minijinja::value::Serde(j)),
        Value::List(items) => items.iter().map(value_to_mj).collect(),
        // an opaque value as text: its connector's functions read inside it
        Value::Opaque(o) => Mj::from(o.0.text()),
    }
}

#[derive(Debug)]
struct RecordObject {
    record: Arc<Record>,
    lookups: Vec<Option<Arc<Vec<Value>>>>,
    locals: Vec<String>,
    shared: Arc<ScopeShared>,
    segment: Option<usize>,
}

impl std::fmt::Debug for ScopeShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScopeShared")
    }
}

impl Object for RecordObject {
    fn get_value(self: &Arc<Self>, key: &Mj) -> Option<Mj> {
        let key = key.as_str()?;
        if let Some(v) = self.record.get(key) {
            return Some(value_to_mj(v));
        }
        if let Some((_, v)) = self.shared.vars.iter().find(|(n, _)| n == key) {
            return Some(v.clone());
        }
        if let Some(i) = self.shared.lookups.iter().position(|l| l.name == key) {
            return Some(match &self.lookups[i] {
                Some(row) => Mj::from_object(RowObject {
                    schema: self.shared.lookups[i].schema.clone(),
                    row: row.clone(),
                }),
                None => Mj::from(()),
            });
        }
        if key == OPAQUE_KEY {
            let value = self.record.values.iter().find_map(|v| match v {
                Value::Opaque(o) => Some(o.clone()),
                _ => None,
            });
            return Some(Mj::from_object(CallContext {
                value,
                part: self.segment,
                settings: self.shared.function_settings.clone(),
            }));
        }
        if key == LOCALS_KEY {
            return Some(
                self.shared
                    .local_names
                    .iter()
                    .zip(&self.locals)
                    .map(|(n, u)| (n.clone(), Mj::from(u.as_str())))
                    .collect::<std::collections::BTreeMap<_, _>>()
                    .into(),
            );
        }
        None
    }
}

#[derive(Debug)]
struct RowObject {
    schema: Arc<Schema>,
    row: Arc<Vec<Value>>,
}

impl Object for RowObject {
    fn get_value(self: &Arc<Self>, key: &Mj) -> Option<Mj> {
        let i = self.schema.index_of(key.as_str()?)?;
        self.row.get(i).map(value_to_mj)
    }
}

/// Where one resource is rendered, with scratch space reused across records.
#[derive(Default)]
pub(crate) struct RenderBuf {
    pub json: Vec<u8>,
    pub text: String,
    /// `identifier[0]` system and value, as rendered.
    pub identity: [Option<String>; 2],
}

/// An expression that failed for one record.
pub(crate) struct LeafError {
    pub pos: Pos,
    pub path: String,
    pub message: String,
}

fn leaf_error(leaf: &Leaf, message: String) -> LeafError {
    LeafError {
        pos: leaf.pos.clone(),
        path: leaf.path.clone(),
        message,
    }
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn write_reference(out: &mut Vec<u8>, reference: &str) {
    out.extend_from_slice(b"{\"reference\":");
    write_json_str(out, reference);
    out.push(b'}');
}

/// Writes a JSON value with empty parts pruned; false when nothing is left.
fn write_pruned(out: &mut Vec<u8>, value: serde_json::Value) -> bool {
    match prune(value) {
        Some(v) => {
            serde_json::to_writer(&mut *out, &v).expect("writing to a Vec cannot fail");
            true
        }
        None => false,
    }
}

impl Native {
    /// Applies the filter to a non-empty value.
    fn apply(&self, input: serde_json::Value) -> Result<serde_json::Value, String> {
        let text = match &input {
            serde_json::Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
            other => std::borrow::Cow::Owned(other.to_string()),
        };
        match self {
            Native::FhirDate(format) => dates::to_fhir_date(&text, format.as_deref())
                .map(serde_json::Value::String)
                .map_err(|e| e.0),
            Native::FhirDateTime {
                format,
                offset,
                zone,
            } => dates::to_fhir_datetime(
                &text,
                format.as_deref(),
                offset.as_deref(),
                zone.as_deref(),
            )
            .map(serde_json::Value::String)
            .map_err(|e| e.0),
            Native::Decimal => crate::decimal::to_fhir_decimal(&text)
                .map(serde_json::Value::String)
                .map_err(|e| e.0),
            Native::Code { map, default } => {
                let key = text.trim();
                map.get(key)
                    .or(default.as_ref())
                    .cloned()
                    .ok_or_else(|| functions::unmapped_code(key))
            }
        }
    }
}

impl Eval {
    /// The value as JSON (`None` when empty), for the paths that need a value.
    fn value(
        &self,
        scope: &Scope<'_>,
        leaf: &Leaf,
    ) -> Result<Option<serde_json::Value>, LeafError> {
        let value = match self {
            Eval::Column(i) => filter_input(&scope.record.values[*i]),
            Eval::LookupColumn { lookup, column } => match &scope.lookups[*lookup] {
                Some(row) => filter_input(&row[*column]),
                None => serde_json::Value::Null,
            },
            Eval::Local(i) => serde_json::json!({ "reference": scope.locals[*i] }),
            Eval::Filtered { input, filters } => {
                let Some(mut v) = input.value(scope, leaf)? else {
                    return Ok(None);
                };
                for f in filters {
                    v = f.apply(v).map_err(|m| leaf_error(leaf, m))?;
                    if prune(v.clone()).is_none() {
                        return Ok(None);
                    }
                }
                v
            }
            Eval::Ref { .. } => {
                let mut url = String::new();
                if !self.text(scope, &mut url, leaf)? {
                    return Ok(None);
                }
                serde_json::json!({ "reference": url })
            }
            Eval::Expr(expr) => {
                let v = expr
                    .eval(scope.context())
                    .map_err(|e| leaf_error(leaf, expr_error(&e)))?;
                if v.is_undefined() || v.is_none() {
                    return Ok(None);
                }
                serde_json::to_value(&v).map_err(|e| {
                    leaf_error(leaf, format!("the value is not representable as JSON: {e}"))
                })?
            }
        };
        Ok(prune(value))
    }

    /// Appends the value as text; returns whether anything non-empty was written.
    fn text(&self, scope: &Scope<'_>, out: &mut String, leaf: &Leaf) -> Result<bool, LeafError> {
        let before = out.len();
        match self {
            Eval::Column(i) => scope.record.values[*i].write_text(out),
            Eval::LookupColumn { lookup, column } => {
                if let Some(row) = &scope.lookups[*lookup] {
                    row[*column].write_text(out);
                }
            }
            Eval::Local(i) => out.push_str(&scope.locals[*i]),
            Eval::Ref {
                resource_type,
                system,
                value,
            } => {
                let mut v = String::new();
                if value.text(scope, &mut v, leaf)? {
                    out.push_str(&conditional_url(resource_type, system, &v));
                }
            }
            Eval::Filtered { .. } | Eval::Expr(_) => match self.value(scope, leaf)? {
                None => {}
                Some(serde_json::Value::String(s)) => out.push_str(&s),
                Some(serde_json::Value::Object(m))
                    if m.len() == 1 && m.contains_key("reference") =>
                {
                    // a reference in a text leaf is its URL
                    if let Some(r) = m["reference"].as_str() {
                        out.push_str(r);
                    }
                }
                Some(other) => {
                    use std::fmt::Write;
                    let _ = write!(out, "{other}");
                }
            },
        }
        Ok(out.len() > before)
    }

    /// Whether a `when:` condition holds: false for empty, none, `false`, `0`, `no`.
    pub fn truthy(&self, scope: &Scope<'_>, pos: &Pos) -> Result<bool, LeafError> {
        let leaf = Leaf {
            pos: pos.clone(),
            path: "when".into(),
            identity_part: None,
        };
        if let Eval::Expr(expr) = self {
            let v = expr
                .eval(scope.context())
                .map_err(|e| leaf_error(&leaf, expr_error(&e)))?;
            return Ok(v.is_true());
        }
        let mut text = String::new();
        self.text(scope, &mut text, &leaf)?;
        Ok(!matches!(text.trim(), "" | "false" | "0" | "no" | "N"))
    }

    /// Writes the value as JSON; false when it was empty.
    fn write_typed(
        &self,
        scope: &Scope<'_>,
        out: &mut Vec<u8>,
        leaf: &Leaf,
    ) -> Result<bool, LeafError> {
        match self {
            Eval::Column(i) => Ok(write_value(out, &scope.record.values[*i])),
            Eval::LookupColumn { lookup, column } => Ok(match &scope.lookups[*lookup] {
                Some(row) => write_value(out, &row[*column]),
                None => false,
            }),
            Eval::Local(i) => {
                write_reference(out, &scope.locals[*i]);
                Ok(true)
            }
            Eval::Ref { .. } => {
                let mut url = String::new();
                if !self.text(scope, &mut url, leaf)? {
                    return Ok(false);
                }
                write_reference(out, &url);
                Ok(true)
            }
            // `| decimal` last: its digits, as they are, for a JSON number
            Eval::Filtered { filters, .. } if matches!(filters.last(), Some(Native::Decimal)) => {
                Ok(match self.value(scope, leaf)? {
                    Some(serde_json::Value::String(digits)) => {
                        out.extend_from_slice(digits.as_bytes());
                        true
                    }
                    Some(v) => write_pruned(out, v),
                    None => false,
                })
            }
            Eval::Expr(expr) => {
                let v = expr
                    .eval(scope.context())
                    .map_err(|e| leaf_error(leaf, expr_error(&e)))?;
                if let Some(d) = v.downcast_object_ref::<crate::decimal::DecimalDigits>() {
                    out.extend_from_slice(d.0.as_bytes());
                    return Ok(true);
                }
                if v.is_undefined() || v.is_none() {
                    return Ok(false);
                }
                let json = serde_json::to_value(&v).map_err(|e| {
                    leaf_error(leaf, format!("the value is not representable as JSON: {e}"))
                })?;
                Ok(write_pruned(out, json))
            }
            Eval::Filtered { .. } => Ok(match self.value(scope, leaf)? {
                Some(v) => write_pruned(out, v),
                None => false,
            }),
        }
    }
}

/// A record value as a filter reads it: a decimal as its digits (`3.50`
/// stays `3.50`, as minijinja sees it), anything else as JSON.
fn filter_input(value: &Value) -> serde_json::Value {
    match value {
        Value::Decimal(d) => serde_json::Value::String(d.clone()),
        other => other.to_json(),
    }
}

/// Writes a record value as JSON; false when it is empty.
fn write_value(out: &mut Vec<u8>, value: &Value) -> bool {
    match value {
        Value::Text(s) if s.is_empty() => false,
        Value::Text(s) => {
            write_json_str(out, s);
            true
        }
        Value::Null => false,
        // an exact decimal (PostgreSQL numeric) keeps its digits
        Value::Decimal(d) => match crate::decimal::to_fhir_decimal(d) {
            Ok(digits) => {
                out.extend_from_slice(digits.as_bytes());
                true
            }
            // NaN, Infinity: as text, which validation refuses by name
            Err(_) => {
                write_json_str(out, d);
                true
            }
        },
        other => write_pruned(out, other.to_json()),
    }
}

fn expr_error(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => detail.to_owned(),
        None => e.to_string(),
    }
}

/// Drops nulls, empty strings, and arrays or objects left empty.
pub(crate) fn prune(value: serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    match value {
        J::Null => None,
        J::String(s) if s.is_empty() => None,
        J::Array(items) => {
            let kept: Vec<J> = items.into_iter().filter_map(prune).collect();
            (!kept.is_empty()).then_some(J::Array(kept))
        }
        J::Object(map) => {
            let kept: serde_json::Map<String, J> = map
                .into_iter()
                .filter_map(|(k, v)| prune(v).map(|v| (k, v)))
                .collect();
            (!kept.is_empty()).then_some(J::Object(kept))
        }
        other => Some(other),
    }
}

/// Writes an object or array whose empty children are dropped; writes
/// nothing (and returns false) when no child is left.
fn write_container<'t>(
    scope: &Scope<'_>,
    buf: &mut RenderBuf,
    [open, close]: [u8; 2],
    children: impl Iterator<Item = (&'t [u8], &'t Tmpl)>,
) -> Result<bool, LeafError> {
    let start = buf.json.len();
    buf.json.push(open);
    let mut any = false;
    for (prefix, child) in children {
        let mark = buf.json.len();
        if any {
            buf.json.push(b',');
        }
        buf.json.extend_from_slice(prefix);
        if child.write(scope, buf)? {
            any = true;
        } else {
            buf.json.truncate(mark);
        }
    }
    if any {
        buf.json.push(close);
    } else {
        buf.json.truncate(start);
    }
    Ok(any)
}

impl Tmpl {
    /// Writes the rendered JSON for one record into `buf.json`; returns
    /// false (and writes nothing) when everything in it was empty.
    pub fn write(&self, scope: &Scope<'_>, buf: &mut RenderBuf) -> Result<bool, LeafError> {
        let out = &mut buf.json;
        match self {
            Tmpl::Const(None) => Ok(false),
            Tmpl::Const(Some(bytes)) => {
                out.extend_from_slice(bytes);
                Ok(true)
            }
            Tmpl::ConstIdentity(part, text, bytes) => {
                out.extend_from_slice(bytes);
                buf.identity[*part] = Some(text.clone());
                Ok(true)
            }
            Tmpl::Object(fields) => write_container(
                scope,
                buf,
                [b'{', b'}'],
                fields.iter().map(|(prefix, t)| (&prefix[..], t)),
            ),
            Tmpl::Array(items) => {
                write_container(scope, buf, [b'[', b']'], items.iter().map(|t| (&[][..], t)))
            }
            Tmpl::Text(segs, leaf) => {
                let text = &mut buf.text;
                text.clear();
                let mut any = false;
                for seg in segs {
                    match seg {
                        Seg::Lit(s) => text.push_str(s),
                        Seg::Eval(e) => any |= e.text(scope, text, leaf)?,
                    }
                }
                if any {
                    write_json_str(out, text);
                    if let Some(part) = leaf.identity_part {
                        buf.identity[part] = Some(text.clone());
                    }
                }
                Ok(any)
            }
            Tmpl::Typed(eval, leaf) => eval.write_typed(scope, out, leaf),
            Tmpl::When(condition, pos, body) => {
                if condition.truthy(scope, pos)? {
                    body.write(scope, buf)
                } else {
                    Ok(false)
                }
            }
        }
    }
}
