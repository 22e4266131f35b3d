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
//! (a dict of namespace id or OID to system URI). Both are read once, when
//! the mapping compiles ([`Hl7Settings`]); a bad one is a `check` error.

use std::sync::Arc;

use fhirlift_hl7v2::fhir::{self, Authorities};
use fhirlift_hl7v2::{Message, Path, Segment, Zone};
use minijinja::value::{Object, Value as Mj};
use minijinja::{Error, ErrorKind, State};

/// The name under which the record's message is visible to the functions.
pub(crate) const HL7_KEY: &str = "__fhirlift_hl7";

pub use fhirlift_hl7v2::fhir::FALLBACK_AUTHORITY_BASE;

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

/// The zone and authority table of a stream's HL7 functions, read once
/// from its vars when the mapping compiles: no file is read, no table
/// built, per record.
#[derive(Debug)]
pub(crate) struct Hl7Settings {
    pub zone: Zone,
    pub authorities: Authorities,
}

impl Hl7Settings {
    /// From the `hl7_zone` and `hl7_authorities` vars; an error says which
    /// var is wrong and how to write it.
    pub(crate) fn from_vars(vars: &[(String, serde_json::Value)]) -> Result<Hl7Settings, String> {
        let var = |name: &str| vars.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let zone = match var("hl7_zone") {
            None | Some(serde_json::Value::Null) => Zone::utc(),
            Some(serde_json::Value::String(spec)) => {
                Zone::parse(spec).map_err(|e| format!("var hl7_zone: {e}"))?
            }
            Some(_) => {
                return Err(
                    "var hl7_zone: write an offset like \"-05:00\" or an IANA name like America/New_York"
                        .into(),
                );
            }
        };
        let mut table = Vec::new();
        match var("hl7_authorities") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Object(map)) => {
                for (authority, system) in map {
                    let system = system.as_str().filter(|s| s.contains(':')).ok_or_else(|| {
                        format!("var hl7_authorities.{authority}: the system must be a URI (urn:oid:..., http://...)")
                    })?;
                    table.push((authority.clone(), system.to_owned()));
                }
            }
            Some(_) => {
                return Err(
                    "var hl7_authorities: a mapping of assigning authority to identifier system URI"
                        .into(),
                );
            }
        }
        Ok(Hl7Settings {
            zone,
            authorities: Authorities::new(table, FALLBACK_AUTHORITY_BASE),
        })
    }
}

/// A message, the segment an iteration stands on, and the stream's settings.
#[derive(Debug)]
pub(crate) struct Hl7Context {
    pub message: Arc<Message<'static>>,
    /// The index of the current `for_each` segment.
    pub segment: Option<usize>,
    pub settings: Arc<Hl7Settings>,
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

fn hl7_identifier(state: &State, path: String) -> Result<Mj, Error> {
    let ctx = context(state)?;
    per_repetition(state, &path, |raw, d| {
        fhir::identifier(raw, d, &ctx.settings.authorities)
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
    let ctx = context(state)?;
    fhir::datetime(&raw, &ctx.settings.zone)
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
