//! FHIR-shaped templates: the resource as YAML, with expressions in leaves.
//!
//! A string leaf is text with `{{ expr }}` parts; a leaf written `= expr` is
//! a typed value (number, bool, object). Simple column, variable and lookup
//! paths are resolved at compile time to positions and read directly; any
//! other expression goes through minijinja, compiled once. Empty results
//! drop their field, and parents left empty are dropped too. An object or
//! list item with its own `when:` is left out when the condition is false.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use minijinja::value::Value as Mj;
use minijinja::{Environment, Expression};

use crate::config::ConfigError;
use crate::functions::{CallContext, OPAQUE_KEY};
use crate::functions::{GLOBAL_NAMES, LOCALS_KEY, ZONE_KEY};
use crate::yaml::{Node, NodeKind, Pos};

mod render;

use crate::{LookupTable, dates, functions};
use fhirlift_core::group::conditional_url;
use fhirlift_core::record::{Record, Schema, Value};
pub(crate) use render::{RenderBuf, Scope, ScopeShared, prune};

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
        zone: Option<String>,
    },
    Code {
        map: HashMap<String, serde_json::Value>,
        default: Option<serde_json::Value>,
    },
    /// `| decimal`: the digits, written verbatim as a JSON number.
    Decimal,
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
    /// An object or list item with its own `when:`: left out when false.
    When(Eval, Pos, Box<Tmpl>),
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
    /// Every element path compiled (`Patient.name[0].given`) with the
    /// place that writes it: the key's for a field, the item's for a list
    /// item. Taken per template for [`fhirlift_core::TemplatePlaces`].
    pub places: Vec<(String, Pos)>,
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
            places: Vec::new(),
            referenced_types: BTreeSet::new(),
            engine_only: false,
        }
    }

    pub fn compile(&mut self, node: &Node, path: &str) -> Tmpl {
        match &node.kind {
            NodeKind::Map(entries)
                if entries
                    .iter()
                    .any(|(k, v)| k.key_text() == "when" && v.as_str().is_some()) =>
            {
                // `when:` on an object or list item: the rest of it, kept
                // only when the condition holds (a list named `when`, as
                // Timing.repeat.when, is an element, not a condition)
                let mut condition = Condition::Always;
                let mut rest = Vec::with_capacity(entries.len() - 1);
                for (k, v) in entries {
                    match v.as_str() {
                        Some(expr) if k.key_text() == "when" => {
                            let expr = expr.trim_start_matches('=').trim();
                            condition = self.compile_condition(expr, v);
                        }
                        _ => rest.push((k.clone(), v.clone())),
                    }
                }
                let inner = Node {
                    pos: node.pos.clone(),
                    kind: NodeKind::Map(rest),
                };
                let body = self.compile(&inner, path);
                match condition {
                    Condition::Always => body,
                    Condition::Never => Tmpl::Const(None),
                    Condition::Check(eval, pos) => Tmpl::When(eval, pos, Box::new(body)),
                }
            }
            NodeKind::Map(entries) => Tmpl::Object(
                entries
                    .iter()
                    .map(|(k, v)| {
                        let key = k.key_text();
                        let child_path = format!("{path}.{key}");
                        self.places.push((child_path.clone(), k.pos.clone()));
                        let child = self.compile(v, &child_path);
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
                    .map(|(i, v)| {
                        let item_path = format!("{path}[{i}]");
                        self.places.push((item_path.clone(), v.pos.clone()));
                        self.compile(v, &item_path)
                    })
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
            "decimal" if named.is_empty() && positional.is_empty() => Some(Native::Decimal),
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
                let mut zone = None;
                for (k, v) in &named {
                    match k.as_str() {
                        "format" => format = Some(text(v)?),
                        "offset" => offset = Some(text(v)?),
                        "zone" => zone = Some(text(v)?),
                        _ => return None,
                    }
                }
                if offset.is_none()
                    && zone.is_none()
                    && let Some((_, z)) = self.names.vars.iter().find(|(k, _)| k == ZONE_KEY)
                    && let Some(z) = z.as_str()
                {
                    (offset, zone) = crate::functions::default_zone(z);
                }
                Some(Native::FhirDateTime {
                    format,
                    offset,
                    zone,
                })
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
