//! HL7 v2 access in mapping expressions.
//!
//! A record of the `hl7v2` connector holds its parsed message. Expressions
//! read it with terser paths and turn v2 data types into FHIR:
//!
//! - `hl7('PID-5.1')`: the decoded value at a path (first repetition unless
//!   the path names one: `PID-3(2).1`); `hl7_all('PID-3.1')`: every repetition.
//! - `hl7_name('PID-5')`, `hl7_address('PID-11')`, `hl7_telecom('PID-13', 'home')`,
//!   `hl7_identifier('PID-3')`: lists of HumanName, Address, ContactPoint,
//!   Identifier, one per repetition; `hl7_codeable('OBX-3')`: a
//!   CodeableConcept; `hl7_datetime('OBX-14')`, `hl7_date('PID-7')`.
//!
//! Which segment a path reads: inside a `for_each: OBX` entry, `OBX-…` is the
//! OBX of this iteration, and any other segment is the nearest one of that
//! name before it (the OBR an OBX belongs to, the PID of its patient);
//! outside, or when none comes before, the first of that name.
//!
//! Times without an offset take the zone of the mapping's `hl7_zone` var
//! (an offset like `-05:00` or an IANA name), UTC when none is set;
//! identifier authorities map to systems through the `hl7_authorities` var
//! (a dict of namespace id or OID to system URI).

use std::sync::Arc;

use fhirlift_hl7v2::fhir::{self, Authorities};
use fhirlift_hl7v2::{Message, Path, Segment, Zone};
use minijinja::value::{Object, Value as Mj};
use minijinja::{Error, ErrorKind, State};

/// The name under which the record's message is visible to the functions.
pub(crate) const HL7_KEY: &str = "__fhirlift_hl7";

/// The system prefix of identifiers whose authority is not in `hl7_authorities`.
pub const FALLBACK_AUTHORITY_BASE: &str = "urn:fhirlift:hl7v2:authority:";

/// Names of the HL7 functions, for the column check.
pub(crate) const HL7_FUNCTIONS: &[&str] = &[
    "hl7",
    "hl7_all",
    "hl7_name",
    "hl7_address",
    "hl7_telecom",
    "hl7_identifier",
    "hl7_codeable",
    "hl7_datetime",
    "hl7_date",
];

/// A message and the segment an iteration stands on.
#[derive(Debug)]
pub(crate) struct Hl7Context {
    pub message: Arc<Message<'static>>,
    /// The index of the current `for_each` segment.
    pub segment: Option<usize>,
}

impl Object for Hl7Context {}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, message)
}

fn context(state: &State) -> Result<Arc<Hl7Context>, Error> {
    state
        .lookup(HL7_KEY)
        .and_then(|v| v.downcast_object::<Hl7Context>())
        .ok_or_else(|| {
            invalid(
                "HL7 paths read HL7 v2 messages: this stream's source is not the hl7v2 connector"
                    .into(),
            )
        })
}

fn parse_path(path: &str) -> Result<Path, Error> {
    Path::parse(path).map_err(|e| invalid(e.to_string()))
}

/// The segment a path reads, by the rule in the module docs.
pub(crate) fn locate<'m>(
    message: &'m Message<'static>,
    current: Option<usize>,
    name: &str,
) -> Option<Segment<'m>> {
    if let Some(at) = current {
        let before = message
            .segments()
            .take(at + 1)
            .filter(|s| s.name() == name)
            .last();
        if before.is_some() {
            return before;
        }
    }
    message.segments().find(|s| s.name() == name)
}

/// The raw repetitions a path names (one when it names a repetition).
fn repetitions<'m>(segment: &Segment<'m>, path: &Path) -> Vec<&'m str> {
    match path.repetition {
        Some(n) => segment
            .repetitions(path.field)
            .get(n.saturating_sub(1))
            .copied()
            .into_iter()
            .collect(),
        None => segment.repetitions(path.field),
    }
}

fn with_segment<T>(
    state: &State,
    path: &str,
    f: impl FnOnce(&Message<'static>, Segment<'_>, &Path) -> T,
) -> Result<Option<T>, Error> {
    let ctx = context(state)?;
    let path = parse_path(path)?;
    let message = &ctx.message;
    Ok(locate(message, ctx.segment, &path.segment).map(|s| f(message, s, &path)))
}

fn text(value: Option<String>) -> Mj {
    match value {
        Some(s) if !s.is_empty() => Mj::from(s),
        _ => Mj::from(()),
    }
}

fn hl7(state: &State, path: String) -> Result<Mj, Error> {
    let value = with_segment(state, &path, |m, s, p| s.raw(p).map(|raw| m.value(raw)))?;
    Ok(text(value.flatten()))
}

fn hl7_all(state: &State, path: String) -> Result<Mj, Error> {
    let values = with_segment(state, &path, |m, s, p| {
        let mut out = Vec::new();
        for n in 1..=s.repetitions(p.field).len() {
            let one = Path {
                repetition: Some(n),
                ..p.clone()
            };
            if let Some(v) = s
                .raw(&one)
                .map(|raw| m.value(raw))
                .filter(|v| !v.is_empty())
            {
                out.push(Mj::from(v));
            }
        }
        out
    })?;
    Ok(Mj::from(values.unwrap_or_default()))
}

fn json_list(values: Option<Vec<serde_json::Value>>) -> Mj {
    match values {
        Some(v) if !v.is_empty() => Mj::from(minijinja::value::Serde(v)),
        _ => Mj::from(()),
    }
}

fn per_repetition(
    state: &State,
    path: &str,
    f: impl Fn(&str, &fhirlift_hl7v2::Delimiters) -> Option<serde_json::Value>,
) -> Result<Mj, Error> {
    let values = with_segment(state, path, |m, s, p| {
        let d = m.delimiters();
        repetitions(&s, p)
            .into_iter()
            .filter_map(|raw| f(raw, &d))
            .collect::<Vec<_>>()
    })?;
    Ok(json_list(values))
}

fn hl7_name(state: &State, path: String) -> Result<Mj, Error> {
    per_repetition(state, &path, fhir::human_name)
}

fn hl7_address(state: &State, path: String) -> Result<Mj, Error> {
    per_repetition(state, &path, fhir::address)
}

fn hl7_telecom(state: &State, path: String, default_use: Option<String>) -> Result<Mj, Error> {
    per_repetition(state, &path, |raw, d| {
        fhir::contact_point(raw, d, default_use.as_deref())
    })
}

fn authorities(state: &State) -> Authorities {
    let table = state
        .lookup("hl7_authorities")
        .and_then(|v| {
            v.try_iter()
                .ok()
                .map(|keys| (v.clone(), keys.collect::<Vec<_>>()))
        })
        .map(|(map, keys)| {
            keys.into_iter()
                .filter_map(|k| {
                    let value = map.get_item(&k).ok()?;
                    Some((k.as_str()?.to_owned(), value.as_str()?.to_owned()))
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    Authorities::new(table, FALLBACK_AUTHORITY_BASE)
}

fn hl7_identifier(state: &State, path: String) -> Result<Mj, Error> {
    let authorities = authorities(state);
    per_repetition(state, &path, |raw, d| {
        fhir::identifier(raw, d, &authorities)
    })
}

fn hl7_codeable(state: &State, path: String) -> Result<Mj, Error> {
    let value = with_segment(state, &path, |m, s, p| {
        s.raw(p)
            .and_then(|raw| fhir::codeable_concept(raw, &m.delimiters()))
    })?;
    Ok(match value.flatten() {
        Some(v) => Mj::from(minijinja::value::Serde(v)),
        None => Mj::from(()),
    })
}

fn zone(state: &State) -> Result<Zone, Error> {
    match state
        .lookup("hl7_zone")
        .filter(|v| !v.is_none() && !v.is_undefined())
    {
        Some(v) => Zone::parse(v.as_str().unwrap_or_default())
            .map_err(|e| invalid(format!("var hl7_zone: {e}"))),
        None => Ok(Zone::utc()),
    }
}

/// The first component of a TS/DTM at a path (`^precision` dropped).
fn time_text(state: &State, path: &str) -> Result<Option<String>, Error> {
    let value = with_segment(state, path, |m, s, p| {
        let raw = s.raw(p)?;
        let d = m.delimiters();
        let first = raw.split(d.component).next().unwrap_or(raw);
        Some(m.value(first))
    })?;
    Ok(value.flatten().filter(|v| !v.is_empty()))
}

fn hl7_datetime(state: &State, path: String) -> Result<Mj, Error> {
    let Some(raw) = time_text(state, &path)? else {
        return Ok(Mj::from(()));
    };
    let zone = zone(state)?;
    fhir::datetime(&raw, &zone)
        .map(text)
        .map_err(|e| invalid(format!("{path}: {e}")))
}

fn hl7_date(state: &State, path: String) -> Result<Mj, Error> {
    let Some(raw) = time_text(state, &path)? else {
        return Ok(Mj::from(()));
    };
    fhir::date(&raw)
        .map(text)
        .map_err(|e| invalid(format!("{path}: {e}")))
}

/// Adds the HL7 functions to an expression environment.
pub(crate) fn register(env: &mut minijinja::Environment<'static>) {
    env.add_function("hl7", hl7);
    env.add_function("hl7_all", hl7_all);
    env.add_function("hl7_name", hl7_name);
    env.add_function("hl7_address", hl7_address);
    env.add_function("hl7_telecom", hl7_telecom);
    env.add_function("hl7_identifier", hl7_identifier);
    env.add_function("hl7_codeable", hl7_codeable);
    env.add_function("hl7_datetime", hl7_datetime);
    env.add_function("hl7_date", hl7_date);
}
