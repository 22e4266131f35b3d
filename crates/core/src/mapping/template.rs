//! FHIR-shaped templates: the resource as YAML, with expressions in leaves.
//!
//! A string leaf is text with `{{ expr }}` parts; a leaf written `= expr` is
//! a typed value (number, bool, object). Simple column, variable and lookup
//! paths are resolved at compile time to positions and read directly; any
//! other expression goes through minijinja, compiled once. Empty results
//! drop their field, and parents left empty are dropped too.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use minijinja::value::{Object, Value as Mj};
use minijinja::{Environment, Expression};

use super::LookupTable;
use super::functions::{GLOBAL_NAMES, LOCALS_KEY};
use crate::config::ConfigError;
use crate::record::{Record, Schema, Value};
use crate::yaml::{Node, NodeKind, Pos};

/// Where a leaf was written: for errors.
#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    pub pos: Pos,
    /// The field path in the resource, e.g. `Patient.name[0].family`.
    pub path: String,
}

/// How one expression is evaluated.
pub(crate) enum Eval {
    Column(usize),
    LookupColumn { lookup: usize, column: usize },
    Local(usize),
    Expr(Expression<'static, 'static>),
}

pub(crate) enum Seg {
    Lit(String),
    Eval(Eval),
}

/// A compiled template node.
pub(crate) enum Tmpl {
    Const(serde_json::Value),
    Object(Vec<(String, Tmpl)>),
    Array(Vec<Tmpl>),
    Text(Vec<Seg>, Leaf),
    Typed(Eval, Leaf),
}

/// What the compiler needs to know about names.
pub(crate) struct Names<'a> {
    pub env: &'static Environment<'static>,
    pub columns: &'a Schema,
    pub vars: &'a [(String, serde_json::Value)],
    pub lookups: &'a [Arc<LookupTable>],
    pub locals: &'a [String],
}

/// Compiles templates, collecting every error and every `ref('Type', …)`.
pub(crate) struct Compiler<'a> {
    pub names: Names<'a>,
    pub errors: Vec<ConfigError>,
    /// Resource types named in `ref(...)` calls: phase ordering uses them.
    pub referenced_types: BTreeSet<String>,
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `local('name')` written plainly: the name.
fn plain_local(expr: &str) -> Option<&str> {
    let inner = expr.strip_prefix("local(")?.strip_suffix(')')?.trim();
    let name = inner
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))?;
    is_ident(name).then_some(name)
}

impl<'a> Compiler<'a> {
    pub fn new(names: Names<'a>) -> Self {
        Compiler {
            names,
            errors: Vec::new(),
            referenced_types: BTreeSet::new(),
        }
    }

    pub fn compile(&mut self, node: &Node, path: &str) -> Tmpl {
        match &node.kind {
            NodeKind::Map(entries) => Tmpl::Object(
                entries
                    .iter()
                    .map(|(k, v)| {
                        let key = k.key_text();
                        let child = self.compile(v, &format!("{path}.{key}"));
                        (key, child)
                    })
                    .collect(),
            ),
            NodeKind::Seq(items) => Tmpl::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.compile(v, &format!("{path}[{i}]")))
                    .collect(),
            ),
            NodeKind::String(s) => self.compile_string(s, node, path),
            _ => Tmpl::Const(node.to_json()),
        }
    }

    fn leaf(node: &Node, path: &str) -> Leaf {
        Leaf {
            pos: node.pos.clone(),
            path: path.to_owned(),
        }
    }

    fn compile_string(&mut self, s: &str, node: &Node, path: &str) -> Tmpl {
        if let Some(expr) = s.strip_prefix('=') {
            let expr = expr.trim();
            if let Some(value) = self.constant(expr) {
                return Tmpl::Const(value);
            }
            return match self.compile_expr(expr, node) {
                Some(eval) => Tmpl::Typed(eval, Self::leaf(node, path)),
                None => Tmpl::Const(serde_json::Value::Null),
            };
        }
        let mut segs = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            let Some(len) = rest[start + 2..].find("}}") else {
                self.errors.push(ConfigError::at(
                    &node.pos,
                    format!("`{{{{` without a closing `}}}}` in {s:?}"),
                ));
                break;
            };
            if start > 0 {
                segs.push(Seg::Lit(rest[..start].to_owned()));
            }
            let expr = rest[start + 2..start + 2 + len].trim();
            match self.constant(expr) {
                Some(serde_json::Value::String(text)) => segs.push(Seg::Lit(text)),
                Some(other) => segs.push(Seg::Lit(other.to_string())),
                None => {
                    if let Some(eval) = self.compile_expr(expr, node) {
                        segs.push(Seg::Eval(eval));
                    }
                }
            }
            rest = &rest[start + 2 + len + 2..];
        }
        if !rest.is_empty() {
            segs.push(Seg::Lit(rest.to_owned()));
        }
        if segs.iter().all(|s| matches!(s, Seg::Lit(_))) {
            let text: String = segs
                .into_iter()
                .map(|s| match s {
                    Seg::Lit(t) => t,
                    Seg::Eval(_) => unreachable!("all literal"),
                })
                .collect();
            return Tmpl::Const(serde_json::Value::String(text));
        }
        Tmpl::Text(segs, Self::leaf(node, path))
    }

    /// A variable (`{{ src }}`) is folded into the template at compile time.
    fn constant(&self, expr: &str) -> Option<serde_json::Value> {
        if !is_ident(expr) || self.names.columns.index_of(expr).is_some() {
            return None;
        }
        self.names
            .vars
            .iter()
            .find(|(name, _)| name == expr)
            .map(|(_, v)| v.clone())
    }

    fn compile_expr(&mut self, expr: &str, node: &Node) -> Option<Eval> {
        // fast paths: `column`, `lookup.column`, `local('name')`
        if let Some(eval) = self.fast_path(expr) {
            return Some(eval);
        }
        self.note_refs(expr);
        let compiled = match self.names.env.compile_expression_owned(expr.to_owned()) {
            Ok(c) => c,
            Err(e) => {
                self.errors.push(ConfigError::at(
                    &node.pos,
                    format!("expression {expr:?} does not parse: {e}"),
                ));
                return None;
            }
        };
        let mut ok = true;
        let mut used: Vec<String> = compiled.undeclared_variables(true).into_iter().collect();
        used.sort();
        for name in used {
            if let Err(message) = self.check_name(&name) {
                self.errors.push(ConfigError::at(&node.pos, message));
                ok = false;
            }
        }
        if expr.contains("local(") && self.names.locals.is_empty() {
            self.errors.push(ConfigError::at(
                &node.pos,
                "local(...) needs a resource emitted `as: name` in this stream",
            ));
        }
        ok.then_some(Eval::Expr(compiled))
    }

    fn fast_path(&mut self, expr: &str) -> Option<Eval> {
        if let Some(name) = plain_local(expr) {
            let index = self.names.locals.iter().position(|l| l == name);
            return match index {
                Some(i) => Some(Eval::Local(i)),
                None => None, // the general path reports it
            };
        }
        let (root, attr) = match expr.split_once('.') {
            Some((r, a)) => (r, Some(a)),
            None => (expr, None),
        };
        if !is_ident(root) || attr.is_some_and(|a| !is_ident(a)) {
            return None;
        }
        match attr {
            None => self.names.columns.index_of(root).map(Eval::Column),
            Some(attr) => {
                if self.names.columns.index_of(root).is_some() {
                    return None;
                }
                let lookup = self.names.lookups.iter().position(|l| l.name == root)?;
                let column = self.names.lookups[lookup].schema.index_of(attr)?;
                Some(Eval::LookupColumn { lookup, column })
            }
        }
    }

    /// Records the resource types of `ref('Type', ...)` calls.
    fn note_refs(&mut self, expr: &str) {
        let mut rest = expr;
        while let Some(at) = rest.find("ref(") {
            let before_ok = at == 0
                || !rest[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            let after = rest[at + 4..].trim_start();
            if before_ok
                && let Some(q) = after.chars().next().filter(|c| *c == '\'' || *c == '"')
                && let Some(end) = after[1..].find(q)
            {
                self.referenced_types.insert(after[1..1 + end].to_owned());
            }
            rest = &rest[at + 4..];
        }
    }

    fn check_name(&self, name: &str) -> Result<(), String> {
        let (root, attr) = match name.split_once('.') {
            Some((r, a)) => (r, Some(a)),
            None => (name, None),
        };
        if GLOBAL_NAMES.contains(&root)
            || self.names.columns.index_of(root).is_some()
            || self.names.vars.iter().any(|(v, _)| v == root)
        {
            return Ok(());
        }
        if let Some(lookup) = self.names.lookups.iter().find(|l| l.name == root) {
            let attr = attr.map(|a| a.split('.').next().unwrap_or(a));
            return match attr {
                Some(a) if lookup.schema.index_of(a).is_none() => Err(format!(
                    "lookup {root} ({}) has no column {a:?}; its columns: {}",
                    lookup.source,
                    lookup.schema.columns().join(", ")
                )),
                _ => Ok(()),
            };
        }
        Err(format!(
            "{root:?} is not a column of this stream's source, a var or a lookup; columns: {}",
            self.names.columns.columns().join(", ")
        ))
    }
}

/// One record's values, as expressions see them.
pub(crate) struct Scope<'a> {
    pub record: &'a Arc<Record>,
    pub lookups: &'a [Option<Arc<Vec<Value>>>],
    pub locals: &'a [String],
    pub shared: &'a Arc<ScopeShared>,
    mj: OnceLock<Mj>,
}

/// What every record of a stream shares in its expression context.
pub(crate) struct ScopeShared {
    pub vars: Vec<(String, Mj)>,
    pub lookups: Vec<Arc<LookupTable>>,
    /// The stream's `as:` names, in the order of a record's local urn:uuids.
    pub local_names: Vec<String>,
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
    }
}

#[derive(Debug)]
struct RecordObject {
    record: Arc<Record>,
    lookups: Vec<Option<Arc<Vec<Value>>>>,
    locals: Vec<String>,
    shared: Arc<ScopeShared>,
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

impl Eval {
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
            Eval::Expr(expr) => {
                let v = expr
                    .eval(scope.context())
                    .map_err(|e| leaf_error(leaf, expr_error(&e)))?;
                if !(v.is_undefined() || v.is_none()) {
                    match v.as_str() {
                        Some(s) => out.push_str(s),
                        None => {
                            use std::fmt::Write;
                            let _ = write!(out, "{v}");
                        }
                    }
                }
            }
        }
        Ok(out.len() > before)
    }

    /// Whether a `when:` condition holds: false for empty, none, `false`, `0`, `no`.
    pub fn truthy(&self, scope: &Scope<'_>, pos: &Pos) -> Result<bool, LeafError> {
        let leaf = Leaf {
            pos: pos.clone(),
            path: "when".into(),
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

    fn typed(
        &self,
        scope: &Scope<'_>,
        leaf: &Leaf,
    ) -> Result<Option<serde_json::Value>, LeafError> {
        let value = match self {
            Eval::Column(i) => scope.record.values[*i].to_json(),
            Eval::LookupColumn { lookup, column } => match &scope.lookups[*lookup] {
                Some(row) => row[*column].to_json(),
                None => serde_json::Value::Null,
            },
            Eval::Local(i) => serde_json::json!({ "reference": scope.locals[*i] }),
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

impl Tmpl {
    /// Renders for one record; `None` when everything in it was empty.
    pub fn render(&self, scope: &Scope<'_>) -> Result<Option<serde_json::Value>, LeafError> {
        match self {
            Tmpl::Const(v) => Ok(if v.is_null() { None } else { Some(v.clone()) }),
            Tmpl::Object(fields) => {
                let mut map = serde_json::Map::with_capacity(fields.len());
                for (k, t) in fields {
                    if let Some(v) = t.render(scope)? {
                        map.insert(k.clone(), v);
                    }
                }
                Ok((!map.is_empty()).then_some(serde_json::Value::Object(map)))
            }
            Tmpl::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for t in items {
                    if let Some(v) = t.render(scope)? {
                        out.push(v);
                    }
                }
                Ok((!out.is_empty()).then_some(serde_json::Value::Array(out)))
            }
            Tmpl::Text(segs, leaf) => {
                let mut out = String::new();
                let mut any = false;
                for seg in segs {
                    match seg {
                        Seg::Lit(s) => out.push_str(s),
                        Seg::Eval(e) => any |= e.text(scope, &mut out, leaf)?,
                    }
                }
                Ok(any.then_some(serde_json::Value::String(out)))
            }
            Tmpl::Typed(eval, leaf) => eval.typed(scope, leaf),
        }
    }
}
