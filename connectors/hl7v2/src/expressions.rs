//! HL7 v2 access in mapping expressions, registered with core's
//! [`register_functions!`](fhirlift_core::register_functions) so that the
//! template engine knows no source format.
//!
//! A record of the `hl7v2` connector holds its parsed message
//! ([`ParsedMessage`], an opaque value). Expressions read it with terser
//! paths and turn v2 data types into FHIR:
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
//! the mapping compiles (`Hl7Settings`); a bad one is a `check` error.

use std::any::Any;
use std::sync::Arc;

use fhirlift_core::functions::{
    ExpressionFunctions, FunctionCall, FunctionError, FunctionSettings, OpaqueValue,
};
use fhirlift_hl7v2::fhir::{self, Authorities, FALLBACK_AUTHORITY_BASE};
use fhirlift_hl7v2::{Delimiters, Message, Path, Segment, Zone};
use serde_json::Value as Json;

fhirlift_core::register_functions! {
    family: "hl7v2",
    functions: &Hl7Functions,
}

/// A parsed message, as a record of the `hl7v2` connector carries it.
#[derive(Debug)]
pub struct ParsedMessage(pub Message<'static>);

impl OpaqueValue for ParsedMessage {
    fn text(&self) -> &str {
        self.0.text()
    }

    /// `for_each: OBX`: the segments of that name.
    fn parts(&self, name: &str) -> Vec<usize> {
        self.0
            .segments()
            .filter(|s| s.name() == name)
            .map(|s| s.index())
            .collect()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The HL7 functions of mapping expressions.
struct Hl7Functions;

const NAMES: &[&str] = &[
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

impl ExpressionFunctions for Hl7Functions {
    fn names(&self) -> &'static [&'static str] {
        NAMES
    }

    fn settings(&self, vars: &[(String, Json)]) -> Result<FunctionSettings, FunctionError> {
        Ok(Arc::new(Hl7Settings::from_vars(vars)?))
    }

    fn call(
        &self,
        name: &str,
        call: &FunctionCall<'_>,
        args: &[Json],
    ) -> Result<Json, FunctionError> {
        let message = call
            .value
            .and_then(|v| v.downcast::<ParsedMessage>())
            .map(|m| &m.0)
            .ok_or_else(|| {
                "HL7 paths read HL7 v2 messages: this stream's source is not the hl7v2 connector"
                    .to_owned()
            })?;
        let settings = call
            .settings
            .downcast_ref::<Hl7Settings>()
            .ok_or("the HL7 functions' settings are missing")?;
        let at = Call {
            message,
            segment: call.part,
            settings,
        };
        let path = text_arg(name, args, 0)?
            .ok_or_else(|| format!("{name}() takes a path, like {name}('PID-5')"))?;
        match name {
            "hl7" => at.value(path),
            "hl7_all" => at.all(path),
            "hl7_name" => at.per_repetition(path, fhir::human_name),
            "hl7_address" => at.per_repetition(path, fhir::address),
            "hl7_telecom" => {
                let default_use = text_arg(name, args, 1)?;
                at.per_repetition(path, |raw, d| fhir::contact_point(raw, d, default_use))
            }
            "hl7_identifier" => at.per_repetition(path, |raw, d| {
                fhir::identifier(raw, d, &settings.authorities)
            }),
            "hl7_codeable" => at.codeable(path),
            "hl7_datetime" => at.datetime(path),
            "hl7_date" => at.date(path),
            other => Err(format!("{other} is not an HL7 function").into()),
        }
    }
}

/// Argument `i` as text: `None` when absent or none.
fn text_arg<'a>(name: &str, args: &'a [Json], i: usize) -> Result<Option<&'a str>, FunctionError> {
    match args.get(i) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(other) => {
            Err(format!("{name}(): argument {} must be text, not {other}", i + 1).into())
        }
    }
}

/// The zone and authority table of a stream's HL7 functions, read once
/// from its vars when the mapping compiles: no file is read, no table
/// built, per record.
#[derive(Debug)]
struct Hl7Settings {
    zone: Zone,
    authorities: Authorities,
}

impl Hl7Settings {
    /// From the `hl7_zone` and `hl7_authorities` vars; an error says which
    /// var is wrong and how to write it.
    fn from_vars(vars: &[(String, Json)]) -> Result<Hl7Settings, FunctionError> {
        let var = |name: &str| vars.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let zone = match var("hl7_zone") {
            None | Some(Json::Null) => Zone::utc(),
            Some(Json::String(spec)) => {
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
            None | Some(Json::Null) => {}
            Some(Json::Object(map)) => {
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
struct Call<'a> {
    message: &'a Message<'static>,
    /// The index of the current `for_each` segment.
    segment: Option<usize>,
    settings: &'a Hl7Settings,
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

/// Text, or none when empty.
fn text(value: Option<String>) -> Json {
    match value {
        Some(s) if !s.is_empty() => Json::String(s),
        _ => Json::Null,
    }
}

/// A list, or none when empty.
fn json_list(values: Option<Vec<Json>>) -> Json {
    match values {
        Some(v) if !v.is_empty() => Json::Array(v),
        _ => Json::Null,
    }
}

impl Call<'_> {
    fn with_segment<T>(
        &self,
        path: &str,
        f: impl FnOnce(&Message<'static>, Segment<'_>, &Path) -> T,
    ) -> Result<Option<T>, FunctionError> {
        let path = Path::parse(path).map_err(|e| e.to_string())?;
        Ok(locate(self.message, self.segment, &path.segment).map(|s| f(self.message, s, &path)))
    }

    fn value(&self, path: &str) -> Result<Json, FunctionError> {
        let value = self.with_segment(path, |m, s, p| s.raw(p).map(|raw| m.value(raw)))?;
        Ok(text(value.flatten()))
    }

    fn all(&self, path: &str) -> Result<Json, FunctionError> {
        let values = self.with_segment(path, |m, s, p| {
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
                    out.push(Json::String(v));
                }
            }
            out
        })?;
        Ok(Json::Array(values.unwrap_or_default()))
    }

    fn per_repetition(
        &self,
        path: &str,
        f: impl Fn(&str, &Delimiters) -> Option<Json>,
    ) -> Result<Json, FunctionError> {
        let values = self.with_segment(path, |m, s, p| {
            let d = m.delimiters();
            repetitions(&s, p)
                .into_iter()
                .filter_map(|raw| f(raw, &d))
                .collect::<Vec<_>>()
        })?;
        Ok(json_list(values))
    }

    fn codeable(&self, path: &str) -> Result<Json, FunctionError> {
        let value = self.with_segment(path, |m, s, p| {
            s.raw(p)
                .and_then(|raw| fhir::codeable_concept(raw, &m.delimiters()))
        })?;
        Ok(value.flatten().unwrap_or(Json::Null))
    }

    /// The first component of a TS/DTM at a path (`^precision` dropped).
    fn time_text(&self, path: &str) -> Result<Option<String>, FunctionError> {
        let value = self.with_segment(path, |m, s, p| {
            let raw = s.raw(p)?;
            let d = m.delimiters();
            let first = raw.split(d.component).next().unwrap_or(raw);
            Some(m.value(first))
        })?;
        Ok(value.flatten().filter(|v| !v.is_empty()))
    }

    fn datetime(&self, path: &str) -> Result<Json, FunctionError> {
        let Some(raw) = self.time_text(path)? else {
            return Ok(Json::Null);
        };
        fhir::datetime(&raw, &self.settings.zone)
            .map(text)
            .map_err(|e| format!("{path}: {e}").into())
    }

    fn date(&self, path: &str) -> Result<Json, FunctionError> {
        let Some(raw) = self.time_text(path)? else {
            return Ok(Json::Null);
        };
        fhir::date(&raw)
            .map(text)
            .map_err(|e| format!("{path}: {e}").into())
    }
}
