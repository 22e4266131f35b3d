//! The functions and filters mapping expressions can call.
//!
//! - `value | code(M='male', F='female', _default='unknown')` (or a dict:
//!   `code({'1': 'male'})`): a value map; an unmapped value is an error
//!   unless `_default` is given.
//! - `value | fhir_date` / `fhir_date('DD/MM/YYYY')`: a FHIR date.
//! - `value | fhir_datetime(format=None, offset='+01:00')`: a FHIR dateTime.
//! - `ref('Patient', system, value)`: a conditional reference
//!   `{reference: "Patient?identifier=system|value"}`; nothing when value is empty.
//! - `local('name')`: a reference to the resource emitted `as: name` in the
//!   same record (`urn:uuid:` inside a transaction).
//!
//! Empty input gives nothing (the field is dropped), never an error.

use std::collections::HashMap;
use std::sync::Arc;

use fhirlift_core::functions::{ExpressionFunctions, FunctionCall, FunctionSettings, Opaque};
use minijinja::value::{Kwargs, Object, Rest, Value as Mj, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};

use crate::dates;
use fhirlift_core::group::conditional_url;

/// The name under which a record's local urn:uuids are visible to `local()`.
pub(crate) const LOCALS_KEY: &str = "__fhirlift_locals";
/// The variable holding the stream's `zone:` (an IANA name or an offset),
/// for `fhir_datetime` without `offset=` or `zone=`.
pub(crate) const ZONE_KEY: &str = "__fhirlift_zone";

/// The stream's default zone as `(offset, zone)` arguments of
/// `fhir_datetime`.
pub(crate) fn default_zone(zone: &str) -> (Option<String>, Option<String>) {
    if dates::is_offset(zone) {
        (Some(zone.to_owned()), None)
    } else {
        (None, Some(zone.to_owned()))
    }
}

/// Names callable in expressions, not columns: skipped by the column check.
pub(crate) const GLOBAL_NAMES: &[&str] = &[
    "ref",
    "local",
    "system_uri",
    "range",
    "dict",
    "namespace",
    "debug",
    "none",
    "true",
    "false",
    "loop",
];

fn is_empty(v: &Mj) -> bool {
    v.is_undefined() || v.is_none() || v.as_str().is_some_and(str::is_empty)
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, message)
}

fn code(value: Mj, maps: Rest<Mj>, kwargs: Kwargs) -> Result<Mj, Error> {
    if is_empty(&value) {
        return Ok(Mj::from(()));
    }
    let key = match value.as_str() {
        Some(s) => s.trim().to_owned(),
        None => value.to_string(),
    };
    for map in maps.iter() {
        if map.kind() != ValueKind::Map {
            return Err(invalid(
                "code(...) takes dicts and keyword arguments".into(),
            ));
        }
        if let Ok(found) = map.get_item(&Mj::from(key.as_str()))
            && !found.is_undefined()
        {
            return Ok(found);
        }
    }
    let mut result = None;
    for name in kwargs.args() {
        if name == key {
            result = Some(kwargs.get::<Mj>(name)?);
        }
    }
    let default: Option<Mj> = kwargs.get("_default")?;
    // mark every kwarg used: unused ones are the unmapped codes
    for name in kwargs.args() {
        let _: Mj = kwargs.get(name)?;
    }
    kwargs.assert_all_used()?;
    match result.or(default) {
        Some(v) => Ok(v),
        None => Err(invalid(unmapped_code(&key))),
    }
}

/// The message for a value missing from a `code(...)` map.
pub(crate) fn unmapped_code(key: &str) -> String {
    format!("code {key:?} is not in the value map; add it to code(...) or give _default=...")
}

fn text_arg(value: &Mj) -> String {
    match value.as_str() {
        Some(s) => s.to_owned(),
        None => value.to_string(),
    }
}

/// `| decimal`: the source's digits as an exact FHIR decimal.
fn decimal(value: Mj) -> Result<Mj, Error> {
    if is_empty(&value) {
        return Ok(Mj::from(()));
    }
    crate::decimal::to_fhir_decimal(&text_arg(&value))
        .map(crate::decimal::to_mj)
        .map_err(|e| invalid(e.0))
}

fn fhir_date(value: Mj, format: Option<String>) -> Result<Mj, Error> {
    if is_empty(&value) {
        return Ok(Mj::from(()));
    }
    dates::to_fhir_date(&text_arg(&value), format.as_deref())
        .map(Mj::from)
        .map_err(|e| invalid(e.0))
}

fn fhir_datetime(
    state: &State,
    value: Mj,
    format: Option<String>,
    kwargs: Kwargs,
) -> Result<Mj, Error> {
    let mut offset: Option<String> = kwargs.get("offset")?;
    let mut zone: Option<String> = kwargs.get("zone")?;
    if offset.is_none()
        && zone.is_none()
        && let Some(default) = state.lookup(ZONE_KEY).filter(|z| !z.is_none())
    {
        (offset, zone) = default_zone(&default.to_string());
    }
    let format = match format {
        Some(f) => Some(f),
        None => kwargs.get("format")?,
    };
    kwargs.assert_all_used()?;
    if is_empty(&value) {
        return Ok(Mj::from(()));
    }
    dates::to_fhir_datetime(
        &text_arg(&value),
        format.as_deref(),
        offset.as_deref(),
        zone.as_deref(),
    )
    .map(Mj::from)
    .map_err(|e| invalid(e.0))
}

fn reference(resource_type: String, system: Mj, value: Mj) -> Result<Mj, Error> {
    if is_empty(&value) {
        return Ok(Mj::from(()));
    }
    if is_empty(&system) {
        return Err(invalid(empty_ref_system(&resource_type)));
    }
    let url = conditional_url(&resource_type, &text_arg(&system), &text_arg(&value));
    Ok(Mj::from_pairs([("reference", Mj::from(url))]))
}

/// `system_uri('SNOMED')`: the FHIR system URI of a code system name or
/// id (OMOP vocabulary ids, HL7 v2 table 0396 names, OIDs:
/// `fhirlift_core::terminology`, the table the HL7v2 map reads). Empty in,
/// empty out; an unknown name is an error naming the nearest known one
/// (write the URI itself for a local system).
/// `system_uri(name)`, or `system_uri(name, otherwise)`: `otherwise` for a
/// name the table does not know, instead of an error (a local vocabulary).
fn system_uri(name: Mj, otherwise: Option<Mj>) -> Result<Mj, Error> {
    if is_empty(&name) {
        return Ok(Mj::from(()));
    }
    let text = text_arg(&name);
    match fhirlift_core::terminology::system_uri(&text) {
        Some(uri) => Ok(Mj::from(uri)),
        None if otherwise.is_some() => Ok(otherwise.unwrap_or_default()),
        None => {
            let hint = fhirlift_core::spelling::nearest(
                text.trim(),
                fhirlift_core::terminology::known_names(),
            )
            .map(|n| format!(" (did you mean {n}?)"))
            .unwrap_or_default();
            Err(invalid(format!(
                "system_uri: {text:?} is no code system fhirlift knows{hint}; write the system's URI instead, or map the name with code(...)"
            )))
        }
    }
}

/// The message for `ref(...)` without a system.
pub(crate) fn empty_ref_system(resource_type: &str) -> String {
    format!(
        "ref('{resource_type}', ...) has an empty system; an identifier without a system matches any system"
    )
}

fn local(state: &State, name: String) -> Result<Mj, Error> {
    let locals = state.lookup(LOCALS_KEY).unwrap_or_default();
    match locals.get_attr(&name) {
        Ok(v) if !v.is_undefined() => Ok(Mj::from_pairs([("reference", v)])),
        _ => Err(invalid(format!(
            "local('{name}'): no resource of this stream is emitted with `as: {name}`"
        ))),
    }
}

/// The expression environment shared by every mapping of a run.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.add_filter("code", code);
    env.add_filter("fhir_date", fhir_date);
    env.add_filter("fhir_datetime", fhir_datetime);
    env.add_filter("decimal", decimal);
    env.add_function("ref", reference);
    env.add_function("local", local);
    env.add_function("system_uri", system_uri);
    for registration in fhirlift_core::functions::registered() {
        let family = registration.family;
        let functions = registration.functions;
        for &name in functions.names() {
            env.add_function(name, move |state: &State, args: Rest<Mj>| {
                call_registered(state, family, functions, name, &args)
            });
        }
    }
    env
}

/// The name under which a record's opaque value and the stream's function
/// settings are visible to registered functions.
pub(crate) const OPAQUE_KEY: &str = "__fhirlift_opaque";

/// What a registered function's call sees: the record's opaque value, the
/// `for_each` part it stands on, and every family's settings.
#[derive(Debug)]
pub(crate) struct CallContext {
    pub value: Option<Opaque>,
    pub part: Option<usize>,
    pub settings: Arc<Vec<(&'static str, FunctionSettings)>>,
}

impl Object for CallContext {}

/// Whether a name is a function a connector registered (not a column).
pub(crate) fn is_registered(name: &str) -> bool {
    fhirlift_core::functions::registered().any(|r| r.functions.names().contains(&name))
}

/// Names that two families register, or that a family takes from the
/// expression language (`ref`, `range`, ...): one would silently hide the
/// other, so each is an error that names both.
fn name_clashes<'a>(families: impl Iterator<Item = (&'a str, &'a [&'a str])>) -> Vec<String> {
    let mut taken: HashMap<&str, &str> = GLOBAL_NAMES
        .iter()
        .map(|&n| (n, "the expression language"))
        .collect();
    let mut clashes = Vec::new();
    for (family, names) in families {
        for &name in names {
            if let Some(first) = taken.insert(name, family) {
                clashes.push(format!(
                    "the expression function {name}() is registered by {first} and by {family}: \
                     one would hide the other; rename one of them (or leave one plugin out)"
                ));
            }
        }
    }
    clashes
}

/// Every family's settings for a stream, from its vars; the errors name the
/// var (and any function name two families register).
pub(crate) fn family_settings(
    vars: &[(String, serde_json::Value)],
) -> Result<Vec<(&'static str, FunctionSettings)>, Vec<String>> {
    let mut settings = Vec::new();
    let mut errors = name_clashes(
        fhirlift_core::functions::registered().map(|r| (r.family, r.functions.names())),
    );
    for registration in fhirlift_core::functions::registered() {
        match registration.functions.settings(vars) {
            Ok(s) => settings.push((registration.family, s)),
            Err(e) => errors.push(e.0),
        }
    }
    if errors.is_empty() {
        Ok(settings)
    } else {
        Err(errors)
    }
}

/// Calls a registered function: arguments and result cross as JSON.
fn call_registered(
    state: &State,
    family: &str,
    functions: &dyn ExpressionFunctions,
    name: &str,
    args: &[Mj],
) -> Result<Mj, Error> {
    let context = state
        .lookup(OPAQUE_KEY)
        .and_then(|v| v.downcast_object::<CallContext>())
        .ok_or_else(|| invalid(format!("{name}() reads a record: it has none here")))?;
    let settings = context
        .settings
        .iter()
        .find(|(f, _)| *f == family)
        .map(|(_, s)| s)
        .ok_or_else(|| invalid(format!("{name}(): the {family} functions have no settings")))?;
    let args = args
        .iter()
        .map(|a| {
            if a.is_undefined() || a.is_none() {
                Ok(serde_json::Value::Null)
            } else {
                serde_json::to_value(a).map_err(|e| invalid(format!("{name}(): {e}")))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let call = FunctionCall {
        value: context.value.as_ref(),
        part: context.part,
        settings,
    };
    match functions
        .call(name, &call, &args)
        .map_err(|e| invalid(e.0))?
    {
        serde_json::Value::Null => Ok(Mj::from(())),
        serde_json::Value::String(s) => Ok(Mj::from(s)),
        other => Ok(Mj::from(minijinja::value::Serde(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(expr: &str, ctx: Mj) -> Result<Mj, Error> {
        let env = environment();
        env.compile_expression(expr)?.eval(ctx)
    }

    #[test]
    fn code_maps_values_and_refuses_unknown_ones() {
        let ctx = Mj::from_pairs([("g", "F"), ("x", "Q"), ("n", "1"), ("e", "")]);
        assert_eq!(
            eval("g | code(M='male', F='female')", ctx.clone())
                .unwrap()
                .to_string(),
            "female"
        );
        assert_eq!(
            eval("n | code({'1': 'one'})", ctx.clone())
                .unwrap()
                .to_string(),
            "one"
        );
        assert_eq!(
            eval("x | code(M='male', _default='unknown')", ctx.clone())
                .unwrap()
                .to_string(),
            "unknown"
        );
        assert!(eval("e | code(M='male')", ctx.clone()).unwrap().is_none());
        let err = eval("x | code(M='male', F='female')", ctx).unwrap_err();
        assert!(
            err.to_string().contains("\"Q\" is not in the value map"),
            "{err}"
        );
    }

    #[test]
    fn ref_builds_an_escaped_conditional_reference() {
        let ctx = Mj::from_pairs([("id", "B,1")]);
        let v = eval("ref('Patient', 'http://s/id', id)", ctx).unwrap();
        assert_eq!(
            v.get_attr("reference").unwrap().to_string(),
            "Patient?identifier=http://s/id|B%5C%2C1"
        );
        assert!(
            eval("ref('Patient', 'http://s/id', '')", Mj::from(()))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn dates_through_filters() {
        let ctx = Mj::from_pairs([("d", "15/07/1980"), ("t", "2023-06-15 09:30")]);
        assert_eq!(
            eval("d | fhir_date('DD/MM/YYYY')", ctx.clone())
                .unwrap()
                .to_string(),
            "1980-07-15"
        );
        assert_eq!(
            eval("t | fhir_datetime(offset='Z')", ctx.clone())
                .unwrap()
                .to_string(),
            "2023-06-15T09:30:00Z"
        );
        assert!(eval("d | fhir_date", ctx).is_err());
    }

    #[test]
    fn a_function_name_two_families_register_is_an_error_naming_both() {
        assert!(name_clashes([("hl7v2", &["hl7", "hl7_name"][..])].into_iter()).is_empty());
        let clashes = name_clashes(
            [
                ("hl7v2", &["hl7", "hl7_name"][..]),
                ("x12", &["x12", "hl7"][..]),
                ("omop", &["range"][..]),
            ]
            .into_iter(),
        );
        assert_eq!(clashes.len(), 2, "{clashes:?}");
        assert!(
            clashes[0].contains("hl7() is registered by hl7v2 and by x12"),
            "{clashes:?}"
        );
        assert!(
            clashes[1].contains("range() is registered by the expression language and by omop"),
            "{clashes:?}"
        );
    }
}
