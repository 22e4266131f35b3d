//! FHIR-shaped templates: the resource as YAML, with expressions in leaves.
//!
//! A string leaf is text with `{{ expr }}` parts; a leaf written `= expr` is
//! a typed value (number, bool, object). Simple column, variable and lookup
//! paths are resolved at compile time to positions and read directly; any
//! other expression goes through minijinja, compiled once. Empty results
//! drop their field, and parents left empty are dropped too.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use minijinja::value::{Object, Value as Mj};
use minijinja::{Environment, Expression};

use crate::config::ConfigError;
use crate::functions::{CallContext, OPAQUE_KEY};
use crate::functions::{GLOBAL_NAMES, LOCALS_KEY};
use crate::yaml::{Node, NodeKind, Pos};
use crate::{LookupTable, dates, functions};
use fhirlift_core::group::conditional_url;
use fhirlift_core::record::{Record, Schema, Value};

/// Where a leaf was written: for errors.
#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    pub pos: Pos,
    /// The field path in the resource, e.g. `Patient.name[0].family`.
    pub path: String,
    /// `identifier[0].system` (0) or `.value` (1): kept while rendering, so
    /// the resource's identity needs no second look at its JSON.
    pub identity_part: Option<usize>,
}

/// A filter run natively, without the template engine (same semantics).
pub(crate) enum Native {
    FhirDate(Option<String>),
    FhirDateTime {
        format: Option<String>,
        offset: Option<String>,
    },
    Code {
        map: HashMap<String, serde_json::Value>,
        default: Option<serde_json::Value>,
    },
}

/// How one expression is evaluated.
pub(crate) enum Eval {
    Column(usize),
    LookupColumn {
        lookup: usize,
        column: usize,
    },
    Local(usize),
    /// `input | filter | ...` with constant filter arguments.
    Filtered {
        input: Box<Eval>,
        filters: Vec<Native>,
    },
    /// `ref('Type', constant system, value)`.
    Ref {
        resource_type: String,
        system: String,
        value: Box<Eval>,
    },
    /// Anything else, through minijinja.
    Expr(Expression<'static, 'static>),
}

pub(crate) enum Seg {
    Lit(String),
    Eval(Eval),
}

/// A compiled template node.
pub(crate) enum Tmpl {
    /// Pre-serialized JSON; `None` writes nothing.
    Const(Option<Box<[u8]>>),
    /// A constant identifier system or value: written, and kept as identity.
    ConstIdentity(usize, String, Box<[u8]>),
    /// Fields with their pre-serialized `"key":` prefixes.
    Object(Vec<(Box<[u8]>, Tmpl)>),
    Array(Vec<Tmpl>),
    Text(Vec<Seg>, Leaf),
    Typed(Eval, Leaf),
}

/// A `when:` condition, compiled.
pub(crate) enum Condition {
    Always,
    Never,
    Check(Eval, Pos),
}

impl Tmpl {
    fn constant(value: &serde_json::Value) -> Tmpl {
        Tmpl::Const(prune(value.clone()).map(|v| {
            serde_json::to_vec(&v)
                .expect("JSON values serialize")
                .into_boxed_slice()
        }))
    }
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
    /// Every expression through minijinja, none natively: the differential
    /// tests compare the two paths (`differential.rs`).
    pub engine_only: bool,
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Splits at `sep` outside quotes and brackets; `None` when unbalanced.
fn split_top(s: &str, sep: char) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            c if c == sep && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if depth != 0 || quote.is_some() {
        return None;
    }
    parts.push(&s[start..]);
    Some(parts)
}

/// A plain quoted string with no escapes.
fn string_literal(s: &str) -> Option<String> {
    let inner = s
        .strip_prefix('\'')
        .and_then(|r| r.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|r| r.strip_suffix('"')))?;
    (!inner.contains(['\\', '\'', '"'])).then(|| inner.to_owned())
}

/// `name=value` (not `name==value`).
fn kwarg(arg: &str) -> Option<(&str, &str)> {
    let at = arg.find('=')?;
    let (key, rest) = (arg[..at].trim(), &arg[at + 1..]);
    (is_ident(key) && !rest.starts_with('=')).then_some((key, rest.trim()))
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
            engine_only: false,
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
                        let mut prefix = serde_json::to_vec(&key).expect("strings serialize");
                        prefix.push(b':');
                        (prefix.into_boxed_slice(), child)
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
            NodeKind::String(s) => match (
                self.compile_string(s, node, path),
                Self::leaf(node, path).identity_part,
            ) {
                (Tmpl::Const(Some(bytes)), Some(part)) => match serde_json::from_slice(&bytes) {
                    Ok(serde_json::Value::String(text)) => Tmpl::ConstIdentity(part, text, bytes),
                    _ => Tmpl::Const(Some(bytes)),
                },
                (tmpl, _) => tmpl,
            },
            _ => Tmpl::constant(&node.to_json()),
        }
    }

    fn leaf(node: &Node, path: &str) -> Leaf {
        let identity_part = match path.split_once('.') {
            Some((_, "identifier[0].system")) => Some(0),
            Some((_, "identifier[0].value")) => Some(1),
            _ => None,
        };
        Leaf {
            pos: node.pos.clone(),
            path: path.to_owned(),
            identity_part,
        }
    }

    fn compile_string(&mut self, s: &str, node: &Node, path: &str) -> Tmpl {
        if let Some(expr) = s.strip_prefix('=') {
            let expr = expr.trim();
            if let Some(value) = self.constant(expr) {
                return Tmpl::constant(&value);
            }
            return match self.compile_expr(expr, node) {
                Some(eval) => Tmpl::Typed(eval, Self::leaf(node, path)),
                None => Tmpl::Const(None),
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
                Some(serde_json::Value::Null) => {}
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
                    Seg::Eval(_) => String::new(),
                })
                .collect();
            return Tmpl::constant(&serde_json::Value::String(text));
        }
        Tmpl::Text(segs, Self::leaf(node, path))
    }

    /// A `when:` condition.
    pub fn compile_condition(&mut self, expr: &str, node: &Node) -> Condition {
        if let Some(value) = self.constant(expr).or_else(|| self.const_eval(expr)) {
            let holds = !matches!(
                value,
                serde_json::Value::Null | serde_json::Value::Bool(false)
            ) && value != serde_json::Value::String(String::new());
            return if holds {
                Condition::Always
            } else {
                Condition::Never
            };
        }
        match self.compile_expr(expr, node) {
            Some(eval) => Condition::Check(eval, node.pos.clone()),
            None => Condition::Never,
        }
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

    /// Evaluates an expression that uses only literals and vars, once.
    fn const_eval(&self, expr: &str) -> Option<serde_json::Value> {
        let compiled = self.names.env.compile_expression(expr).ok()?;
        let uses_only_vars = compiled.undeclared_variables(false).iter().all(|name| {
            self.names.columns.index_of(name).is_none()
                && self.names.vars.iter().any(|(v, _)| v == name)
        });
        if !uses_only_vars {
            return None;
        }
        let context = Mj::from_pairs(
            self.names
                .vars
                .iter()
                .map(|(n, v)| (n.as_str(), Mj::from(minijinja::value::Serde(v)))),
        );
        let value = compiled.eval(context).ok()?;
        if value.is_undefined() {
            return None;
        }
        serde_json::to_value(&value).ok()
    }

    fn compile_expr(&mut self, expr: &str, node: &Node) -> Option<Eval> {
        self.note_refs(expr);
        if !self.engine_only
            && let Some(eval) = self.native(expr)
        {
            return Some(eval);
        }
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
        for (name, nearest) in crate::filters::unknown_filters(self.names.env, expr) {
            self.errors.push(ConfigError::at(
                &node.pos,
                crate::filters::unknown_filter_message(&name, nearest),
            ));
            ok = false;
        }
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

    /// The common shapes, evaluated without the template engine:
    /// `path | fhir_date(...) | code(...)` and `ref('T', system, path)`.
    /// Anything else returns `None` and goes through minijinja.
    fn native(&self, expr: &str) -> Option<Eval> {
        let parts = split_top(expr, '|')?;
        let (head, filters) = parts.split_first()?;
        let head = head.trim();
        let input = match self.fast_path(head) {
            Some(eval) => eval,
            None => self.native_ref(head)?,
        };
        if filters.is_empty() {
            return Some(input);
        }
        let filters = filters
            .iter()
            .map(|f| self.native_filter(f.trim()))
            .collect::<Option<Vec<_>>>()?;
        Some(Eval::Filtered {
            input: Box::new(input),
            filters,
        })
    }

    fn native_ref(&self, head: &str) -> Option<Eval> {
        let inner = head.strip_prefix("ref(")?.strip_suffix(')')?;
        let args = split_top(inner, ',')?;
        let [resource_type, system, value] = args.as_slice() else {
            return None;
        };
        let resource_type = string_literal(resource_type.trim())?;
        let system = match self.const_eval(system.trim())? {
            serde_json::Value::String(s) if !s.is_empty() => s,
            _ => return None,
        };
        let value = self.native(value.trim())?;
        Some(Eval::Ref {
            resource_type,
            system,
            value: Box::new(value),
        })
    }

    fn native_filter(&self, filter: &str) -> Option<Native> {
        let (name, args) = match filter.find('(') {
            Some(at) => (
                filter[..at].trim(),
                split_top(filter[at + 1..].strip_suffix(')')?, ',')?,
            ),
            None => (filter, Vec::new()),
        };
        let mut positional = Vec::new();
        let mut named = Vec::new();
        for arg in args.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
            match kwarg(arg) {
                Some((key, value)) => named.push((key.to_owned(), self.const_eval(value)?)),
                None => positional.push(self.const_eval(arg)?),
            }
        }
        let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        match name {
            "fhir_date" if named.is_empty() && positional.len() <= 1 => {
                let format = match positional.first() {
                    Some(f) => Some(text(f)?),
                    None => None,
                };
                Some(Native::FhirDate(format))
            }
            "fhir_datetime" if positional.len() <= 1 => {
                let mut format = match positional.first() {
                    Some(f) => Some(text(f)?),
                    None => None,
                };
                let mut offset = None;
                for (k, v) in &named {
                    match k.as_str() {
                        "format" => format = Some(text(v)?),
                        "offset" => offset = Some(text(v)?),
                        _ => return None,
                    }
                }
                Some(Native::FhirDateTime { format, offset })
            }
            "code" => {
                let mut map = HashMap::new();
                let mut default = None;
                for dict in positional {
                    let serde_json::Value::Object(entries) = dict else {
                        return None;
                    };
                    for (k, v) in entries {
                        map.entry(k).or_insert(v);
                    }
                }
                for (k, v) in named {
                    if k == "_default" {
                        default = Some(v);
                    } else {
                        map.entry(k).or_insert(v);
                    }
                }
                Some(Native::Code { map, default })
            }
            _ => None,
        }
    }

    fn fast_path(&self, expr: &str) -> Option<Eval> {
        if let Some(name) = plain_local(expr) {
            return self
                .names
                .locals
                .iter()
                .position(|l| l == name)
                .map(Eval::Local);
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
            || crate::functions::is_registered(root)
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
            Native::FhirDateTime { format, offset } => {
                dates::to_fhir_datetime(&text, format.as_deref(), offset.as_deref())
                    .map(serde_json::Value::String)
                    .map_err(|e| e.0)
            }
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
            Eval::Column(i) => scope.record.values[*i].to_json(),
            Eval::LookupColumn { lookup, column } => match &scope.lookups[*lookup] {
                Some(row) => row[*column].to_json(),
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
            Eval::Filtered { .. } | Eval::Expr(_) => Ok(match self.value(scope, leaf)? {
                Some(v) => write_pruned(out, v),
                None => false,
            }),
        }
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
        }
    }
}
