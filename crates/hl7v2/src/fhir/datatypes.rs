//! HL7 v2 composite datatypes → FHIR R4 datatypes (mapping sheet §3, §4):
//! CX / EI → Identifier, XPN → HumanName, XAD → Address, XTN →
//! ContactPoint, CWE / CE / CNE → CodeableConcept or Coding, OBX-6 units,
//! NM → JSON number, SN → Quantity / Range / Ratio / string.
//!
//! Every function takes ONE field repetition as written (escaped) and the
//! message's [`Delimiters`]. Text parts are decoded and trimmed (FHIR codes
//! may not carry surrounding spaces, and a stray space in a name or city is
//! noise); a part that is empty, blank or the explicit null `""` is absent.
//! A value that has nothing to map is `None`. Dates inside (periods) go
//! through [`date`]; one that does not read is left out.

use std::collections::HashMap;

use fhirlift_core::group::is_uuid_text as is_uuid;
use fhirlift_core::terminology::is_oid;
use serde_json::{Map, Value, json};

use super::Composite;
use super::dtm::date;
use super::tables::{self, V2_0203};
use crate::Delimiters;

/// The default prefix for assigning authorities that no table names.
pub const AUTHORITY_FALLBACK_BASE: &str = "urn:fhirlift:hl7v2:authority:";
/// The prefix for coding-system names that [`coding_system`] does not know.
pub const CODING_SYSTEM_FALLBACK_BASE: &str = "urn:fhirlift:hl7v2:coding-system:";
/// The data-absent-reason extension.
pub const DATA_ABSENT_REASON: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";

/// Component `n`, decoded and trimmed; `None` when blank.
pub(super) fn text(c: &Composite, n: usize) -> Option<String> {
    c.get(n).and_then(trimmed)
}

/// Subcomponent `s` of component `n`, decoded and trimmed.
fn sub_text(c: &Composite, n: usize, s: usize) -> Option<String> {
    c.sub(n, s).and_then(trimmed)
}

fn trimmed(s: String) -> Option<String> {
    let t = s.trim();
    if t.is_empty() {
        None
    } else if t.len() == s.len() {
        Some(s)
    } else {
        Some(t.to_owned())
    }
}

/// Whitespace → `-`, for names appended to a URN.
pub(super) fn dashed(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_whitespace() { '-' } else { c })
        .collect()
}

/// A Period from two v2 dates (as FHIR dates); `None` when neither reads.
fn period(start: Option<String>, end: Option<String>) -> Option<Value> {
    let read = |v: Option<String>| v.and_then(|v| date(&v).ok().flatten());
    let mut m = Map::new();
    if let Some(s) = read(start) {
        m.insert("start".into(), s.into());
    }
    if let Some(e) = read(end) {
        m.insert("end".into(), e.into());
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

/// The system prefix of identifiers whose assigning authority is not in
/// the table (`hl7_authorities`): the authority's name follows it.
pub const FALLBACK_AUTHORITY_BASE: &str = "urn:fhirlift:hl7v2:authority:";

/// Identifier systems for assigning authorities: the configurable table of
/// §3 "HD → system URI".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorities {
    /// HD.1 namespace ids or HD.2 universal ids → system URI.
    table: HashMap<String, String>,
    fallback_base: String,
}

impl Authorities {
    /// table: keys are HD.1 namespace ids or HD.2 universal ids (exact
    /// match, after trimming), values system URIs. fallback_base: prefix for
    /// unknown namespaces, e.g. `urn:fhirlift:hl7v2:authority:` (the
    /// namespace is appended, whitespace → `-`, nothing else encoded).
    pub fn new(
        table: impl IntoIterator<Item = (String, String)>,
        fallback_base: &str,
    ) -> Authorities {
        Authorities {
            table: table
                .into_iter()
                .map(|(k, v)| (k.trim().to_owned(), v))
                .collect(),
            fallback_base: fallback_base.to_owned(),
        }
    }

    /// HD (its three parts, already decoded) → system, first rule that
    /// applies:
    /// 1. the table, on HD.1 then HD.2;
    /// 2. HD.3 `ISO` → `urn:oid:<HD.2>`; `UUID` (or its synonym `GUID`) →
    ///    `urn:uuid:<HD.2>` lower case; `URI` / `URL` → HD.2 as is. An
    ///    HD.2 that is not an OID / UUID as its type says skips this rule;
    /// 3. HD.1 → fallback base + HD.1; else HD.2 → fallback base + HD.2.
    ///
    /// `None` when all parts are empty. HD.3 types such as `CLIA` or `HCD`
    /// name no system of their own (FC's `ex:Identifier/HCD` is lossy).
    pub fn system(
        &self,
        namespace: Option<&str>,
        universal: Option<&str>,
        universal_type: Option<&str>,
    ) -> Option<String> {
        let (ns, uni, ty) = (clean(namespace), clean(universal), clean(universal_type));
        for key in [ns, uni].into_iter().flatten() {
            if let Some(system) = self.table.get(key) {
                return Some(system.clone());
            }
        }
        if let (Some(uni), Some(ty)) = (uni, ty) {
            let ty = ty.to_ascii_uppercase();
            match ty.as_str() {
                "ISO" => {
                    let oid = strip_prefix_ignore_case(uni, "urn:oid:");
                    if is_oid(oid) {
                        return Some(format!("urn:oid:{oid}"));
                    }
                }
                "UUID" | "GUID" => {
                    let uuid = strip_prefix_ignore_case(uni, "urn:uuid:");
                    if is_uuid(uuid) {
                        return Some(format!("urn:uuid:{}", uuid.to_ascii_lowercase()));
                    }
                }
                "URI" | "URL" => return Some(uni.to_owned()),
                _ => {}
            }
        }
        ns.or(uni)
            .map(|v| format!("{}{}", self.fallback_base, dashed(v)))
    }
}

impl Default for Authorities {
    /// Empty table, fallback `urn:fhirlift:hl7v2:authority:`.
    fn default() -> Self {
        Authorities::new([], AUTHORITY_FALLBACK_BASE)
    }
}

/// Trimmed; `None` when blank.
fn clean(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|v| !v.is_empty())
}

fn strip_prefix_ignore_case<'s>(s: &'s str, prefix: &str) -> &'s str {
    match s.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => s.get(prefix.len()..).unwrap_or(s),
        _ => s,
    }
}

/// An Identifier.type CodeableConcept for a table 0203 code (THO
/// v2-0203, with the display when known): for CX.5 and for the types the
/// maps set themselves (VN, PLAC, FILL…).
pub fn identifier_type(code: &str) -> Value {
    let code = super::coding::code_text(code);
    let mut coding = json!({ "system": V2_0203, "code": code });
    if let Some(display) = tables::identifier_type_display(&code) {
        coding["display"] = display.into();
    }
    json!({ "coding": [coding] })
}

/// CX → Identifier {type (CX.5, THO v2-0203), system (CX.4 HD via
/// [`Authorities`]), value (CX.1), period (CX.7 / CX.8 as dates)}; `None`
/// when CX.1 is empty. CX.2/.3 (check digit) and CX.6 are not mapped.
pub fn identifier(raw: &str, d: &Delimiters, authorities: &Authorities) -> Option<Value> {
    let c = Composite::new(raw, d);
    let value = text(&c, 1)?;
    let mut m = Map::new();
    if let Some(code) = text(&c, 5) {
        m.insert("type".into(), identifier_type(&code));
    }
    let system = authorities.system(
        sub_text(&c, 4, 1).as_deref(),
        sub_text(&c, 4, 2).as_deref(),
        sub_text(&c, 4, 3).as_deref(),
    );
    if let Some(system) = system {
        m.insert("system".into(), system.into());
    }
    m.insert("value".into(), value.into());
    if let Some(p) = period(text(&c, 7), text(&c, 8)) {
        m.insert("period".into(), p);
    }
    Some(Value::Object(m))
}

/// EI (.1 value, .2 namespace, .3 universal id, .4 type) → Identifier
/// {system via [`Authorities`], value}; `None` when .1 is empty.
pub fn entity_identifier(raw: &str, d: &Delimiters, authorities: &Authorities) -> Option<Value> {
    let c = Composite::new(raw, d);
    let value = text(&c, 1)?;
    let mut m = Map::new();
    let system = authorities.system(
        text(&c, 2).as_deref(),
        text(&c, 3).as_deref(),
        text(&c, 4).as_deref(),
    );
    if let Some(system) = system {
        m.insert("system".into(), system.into());
    }
    m.insert("value".into(), value.into());
    Some(Value::Object(m))
}

/// XPN → HumanName (§3, IG column): family .1.1; given [.2, then .3 split
/// on whitespace]; prefix [.5]; suffix [.4, .6, .14]; use .7 (table 0200);
/// period .12/.13, else the .10 range (as dates). `None` when there is no
/// name part. .1.2–.1.5 (own/partner surname parts), .11 and .15 are not
/// mapped here (see [`called_by_name`] for .15).
pub fn human_name(raw: &str, d: &Delimiters) -> Option<Value> {
    let c = Composite::new(raw, d);
    let family = sub_text(&c, 1, 1);
    let mut given: Vec<String> = text(&c, 2).into_iter().collect();
    if let Some(middle) = text(&c, 3) {
        given.extend(middle.split_whitespace().map(str::to_owned));
    }
    let prefix: Vec<String> = text(&c, 5).into_iter().collect();
    let suffix: Vec<String> = [4, 6, 14].iter().filter_map(|&n| text(&c, n)).collect();
    if family.is_none() && given.is_empty() && prefix.is_empty() && suffix.is_empty() {
        return None;
    }
    let mut m = Map::new();
    if let Some(u) = text(&c, 7).and_then(|u| tables::name_use(&u)) {
        m.insert("use".into(), u.into());
    }
    if let Some(f) = family {
        m.insert("family".into(), f.into());
    }
    for (key, list) in [("given", given), ("prefix", prefix), ("suffix", suffix)] {
        if !list.is_empty() {
            m.insert(key.into(), list.into());
        }
    }
    let p = if text(&c, 12).is_some() || text(&c, 13).is_some() {
        period(text(&c, 12), text(&c, 13))
    } else {
        period(sub_text(&c, 10, 1), sub_text(&c, 10, 2))
    };
    if let Some(p) = p {
        m.insert("period".into(), p);
    }
    Some(Value::Object(m))
}

/// XPN.15 "called by" → a second HumanName {use nickname, given [.15]}, as
/// the IG maps it; `None` when .15 is empty.
pub fn called_by_name(raw: &str, d: &Delimiters) -> Option<Value> {
    let c = Composite::new(raw, d);
    let name = text(&c, 15)?;
    Some(json!({ "use": "nickname", "given": [name] }))
}

/// XAD → Address (§3): line [.1.1, .1.2, .1.3 (SAD street, street name,
/// dwelling number), .2 (other designation), .19 (addressee)]; city .3,
/// state .4, postalCode .5, country .6; .7 M / SH → type `postal`, else
/// use (table [`tables::address_use`]); district from .9 (its original
/// text .9.9, else text .9.2, else code .9.1); period .13/.14, else the .12
/// range. `None` when no address part is valued.
///
/// Every part is trimmed: we deviate from FC, which keeps `"Ann Arbor "`.
pub fn address(raw: &str, d: &Delimiters) -> Option<Value> {
    let c = Composite::new(raw, d);
    let line: Vec<String> = [
        sub_text(&c, 1, 1),
        sub_text(&c, 1, 2),
        sub_text(&c, 1, 3),
        text(&c, 2),
        text(&c, 19),
    ]
    .into_iter()
    .flatten()
    .collect();
    let district = sub_text(&c, 9, 9)
        .or_else(|| sub_text(&c, 9, 2))
        .or_else(|| sub_text(&c, 9, 1));
    let parts = [
        ("city", text(&c, 3)),
        ("district", district),
        ("state", text(&c, 4)),
        ("postalCode", text(&c, 5)),
        ("country", text(&c, 6)),
    ];
    if line.is_empty() && parts.iter().all(|(_, v)| v.is_none()) {
        return None;
    }
    let mut m = Map::new();
    if let Some(kind) = text(&c, 7) {
        if let Some(t) = tables::address_type(&kind) {
            m.insert("type".into(), t.into());
        } else if let Some(u) = tables::address_use(&kind) {
            m.insert("use".into(), u.into());
        }
    }
    if !line.is_empty() {
        m.insert("line".into(), line.into());
    }
    for (key, v) in parts {
        if let Some(v) = v {
            m.insert(key.into(), v.into());
        }
    }
    let p = if text(&c, 13).is_some() || text(&c, 14).is_some() {
        period(text(&c, 13), text(&c, 14))
    } else {
        period(sub_text(&c, 12, 1), sub_text(&c, 12, 2))
    };
    if let Some(p) = p {
        m.insert("period".into(), p);
    }
    Some(Value::Object(m))
}

/// XTN → ContactPoint (§3, IG column).
/// - system from .3 (table 0202); .3 empty and .4 valued → email; no
///   system found → `_system` with the data-absent-reason `unknown` (the
///   IG's rule; ContactPoint needs a system once it has a value).
/// - value: email → .4 (else .1, as older messages write it); otherwise
///   .12, else .1, else `+.5 .6 .7 X.8` composed from the valued parts
///   when .7 (the local number) is valued.
/// - use: CP forces `mobile`; else .2 (PRN home, WPN work, PRS mobile,
///   other codes none); else `default_use` when .2 is empty.
/// - rank .18 (a positive integer), period .13/.14 (as dates).
///
/// `None` when there is no value.
pub fn contact_point(raw: &str, d: &Delimiters, default_use: Option<&str>) -> Option<Value> {
    let c = Composite::new(raw, d);
    let email_address = text(&c, 4);
    let (system, forced_use) = match text(&c, 3) {
        Some(equipment) => match tables::telecom_system(&equipment) {
            Some((s, u)) => (Some(s), u),
            None => (None, None),
        },
        None if email_address.is_some() => (Some("email"), None),
        None => (None, None),
    };
    let value = if system == Some("email") {
        email_address.or_else(|| text(&c, 1))
    } else {
        text(&c, 12)
            .or_else(|| text(&c, 1))
            .or_else(|| composed_number(&c))
    }?;
    let usage = forced_use.or_else(|| match text(&c, 2) {
        Some(code) => tables::telecom_use(&code),
        None => default_use,
    });
    let mut m = Map::new();
    match system {
        Some(s) => {
            m.insert("system".into(), s.into());
        }
        None => {
            m.insert(
                "_system".into(),
                json!({ "extension": [{ "url": DATA_ABSENT_REASON, "valueCode": "unknown" }] }),
            );
        }
    }
    m.insert("value".into(), value.into());
    if let Some(u) = usage {
        m.insert("use".into(), u.into());
    }
    let rank = text(&c, 18)
        .and_then(|r| r.parse::<u32>().ok())
        .filter(|r| *r > 0 && i32::try_from(*r).is_ok());
    if let Some(r) = rank {
        m.insert("rank".into(), r.into());
    }
    if let Some(p) = period(text(&c, 13), text(&c, 14)) {
        m.insert("period".into(), p);
    }
    Some(Value::Object(m))
}

/// `+country area local Xextension`, when the local number (.7) is valued.
fn composed_number(c: &Composite) -> Option<String> {
    let local = text(c, 7)?;
    let mut parts = Vec::new();
    if let Some(country) = text(c, 5) {
        parts.push(format!("+{}", country.trim_start_matches('+')));
    }
    parts.extend(text(c, 6));
    parts.push(local);
    if let Some(ext) = text(c, 8) {
        parts.push(format!("X{ext}"));
    }
    Some(parts.join(" "))
}

/// NM text → a JSON number: optional sign (a leading `+` dropped),
/// digits, optional `.digits` (`.5` → 0.5, `5.` → 5, leading zeros
/// dropped). Without serde_json's `arbitrary_precision` feature (the
/// workspace does not enable it) the value goes through i64/u64/f64, so
/// trailing zeros may be lost (`4.00` → `4.0`). `None` when not a number
/// (exponents, `NaN`, text, out of range).
pub fn number(text: &str) -> Option<Value> {
    let t = text.trim();
    let (negative, body) = match t.as_bytes().first()? {
        b'-' => (true, t.get(1..)?),
        b'+' => (false, t.get(1..)?),
        _ => (false, t),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return None;
    }
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let zero = int == "0" && frac.bytes().all(|b| b == b'0');
    let mut canonical = String::with_capacity(t.len() + 2);
    if negative && !zero {
        canonical.push('-');
    }
    canonical.push_str(int);
    if !frac.is_empty() {
        canonical.push('.');
        canonical.push_str(frac);
    }
    canonical
        .parse::<serde_json::Number>()
        .ok()
        .map(Value::Number)
}

/// SN (.1 comparator, .2 num1, .3 separator/suffix, .4 num2) → the
/// Observation value element and its value, per §5 OBX "SN":
/// - `-` → valueRange {low num1, high num2} (either may be absent);
/// - `:` or `/` → valueRatio {numerator num1 (with the comparator),
///   denominator num2};
/// - no separator and no num2 → valueQuantity {value num1, comparator}
///   (`=` dropped);
/// - anything else (`<>`, `+`, other separators, a number that does not
///   read, a comparator on a range) → valueString of the parts as written.
///
/// Unit fields are added by the caller. `None` when the SN is empty.
pub fn structured_numeric(raw: &str, d: &Delimiters) -> Option<(&'static str, Value)> {
    let c = Composite::new(raw, d);
    let comparator = text(&c, 1);
    let num1 = text(&c, 2);
    let separator = text(&c, 3);
    let num2 = text(&c, 4);
    let parts = [&comparator, &num1, &separator, &num2];
    if parts.iter().all(|p| p.is_none()) {
        return None;
    }
    let as_string = || {
        let s: String = parts.iter().filter_map(|p| p.as_deref()).collect();
        Some(("valueString", Value::String(s)))
    };
    let cmp = match comparator.as_deref() {
        None | Some("=") => None,
        Some(c @ ("<" | "<=" | ">=" | ">")) => Some(c.to_owned()),
        Some(_) => return as_string(),
    };
    let read = |n: &Option<String>| -> Result<Option<Value>, ()> {
        match n {
            None => Ok(None),
            Some(n) => number(n).map(Some).ok_or(()),
        }
    };
    let (Ok(n1), Ok(n2)) = (read(&num1), read(&num2)) else {
        return as_string();
    };
    let quantity = |value: Value, cmp: Option<String>| {
        let mut m = Map::new();
        m.insert("value".into(), value);
        if let Some(c) = cmp {
            m.insert("comparator".into(), c.into());
        }
        Value::Object(m)
    };
    match separator.as_deref() {
        Some("-") if cmp.is_none() && (n1.is_some() || n2.is_some()) => {
            let mut m = Map::new();
            if let Some(low) = n1 {
                m.insert("low".into(), json!({ "value": low }));
            }
            if let Some(high) = n2 {
                m.insert("high".into(), json!({ "value": high }));
            }
            Some(("valueRange", Value::Object(m)))
        }
        Some(":" | "/") => match (n1, n2) {
            (Some(a), Some(b)) => Some((
                "valueRatio",
                json!({ "numerator": quantity(a, cmp), "denominator": { "value": b } }),
            )),
            _ => as_string(),
        },
        None => match (n1, n2) {
            (Some(a), None) => Some(("valueQuantity", quantity(a, cmp))),
            _ => as_string(),
        },
        Some(_) => as_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::{codeable_concept, coding, coding_system, quantity_unit};
    use proptest::prelude::*;

    fn d() -> Delimiters {
        Delimiters::default()
    }

    fn hospital_table() -> Authorities {
        Authorities::new(
            [
                (
                    "test1".to_owned(),
                    "https://good-health.example/mrn".to_owned(),
                ),
                (
                    "2.16.840.1.113883.19".to_owned(),
                    "https://uh.example/mrn".to_owned(),
                ),
            ],
            AUTHORITY_FALLBACK_BASE,
        )
    }

    #[test]
    fn authorities() {
        let a = Authorities::default();
        assert_eq!(a.system(None, None, None), None);
        assert_eq!(a.system(Some(" "), Some(""), Some("ISO")), None);
        assert_eq!(
            a.system(
                Some("IA PHIMS Stage"),
                Some("2.16.840.1.114222.4.3.3.5.1.2"),
                Some("ISO")
            )
            .as_deref(),
            Some("urn:oid:2.16.840.1.114222.4.3.3.5.1.2")
        );
        assert_eq!(
            a.system(None, Some("urn:oid:1.2.3"), Some("iso"))
                .as_deref(),
            Some("urn:oid:1.2.3")
        );
        assert_eq!(
            a.system(
                None,
                Some("426D2726-51FC-89FE-A946-8596E80A80EB"),
                Some("UUID")
            )
            .as_deref(),
            Some("urn:uuid:426d2726-51fc-89fe-a946-8596e80a80eb")
        );
        assert_eq!(
            a.system(None, Some("https://hospital.example/ids"), Some("URI"))
                .as_deref(),
            Some("https://hospital.example/ids")
        );
        // HCD, CLIA…: no system of their own → namespace, then universal id
        assert_eq!(
            a.system(Some("test1"), Some("2.16.1"), Some("HCD"))
                .as_deref(),
            Some("urn:fhirlift:hl7v2:authority:test1")
        );
        assert_eq!(
            a.system(None, Some("05D0897628"), Some("CLIA")).as_deref(),
            Some("urn:fhirlift:hl7v2:authority:05D0897628")
        );
        // not an OID although typed ISO
        assert_eq!(
            a.system(Some("GOOD HEALTH"), Some("not an oid"), Some("ISO"))
                .as_deref(),
            Some("urn:fhirlift:hl7v2:authority:GOOD-HEALTH")
        );
        let t = hospital_table();
        assert_eq!(
            t.system(Some("test1"), Some("2.16.1"), Some("HCD"))
                .as_deref(),
            Some("https://good-health.example/mrn")
        );
        // the table wins over ISO, on HD.2 too
        assert_eq!(
            t.system(Some("T1"), Some("2.16.840.1.113883.19"), Some("ISO"))
                .as_deref(),
            Some("https://uh.example/mrn")
        );
        let custom = Authorities::new([], "https://ids.example/");
        assert_eq!(
            custom.system(Some("USSSA"), None, None).as_deref(),
            Some("https://ids.example/USSSA")
        );
    }

    #[test]
    fn oids_and_uuids() {
        assert!(is_oid("2.16.840.1.113883.19"));
        assert!(is_oid("1.0.3"));
        assert!(!is_oid("2"));
        assert!(!is_oid("3.1"));
        assert!(!is_oid("2.016"));
        assert!(!is_oid("2..1"));
        assert!(is_uuid("426d2726-51fc-89fe-a946-8596e80a80eb"));
        assert!(!is_uuid("426d2726-51fc-89fe-a946"));
        assert!(!is_uuid("426d2726-51fc-89fe-a946-8596e80a80eg"));
    }

    #[test]
    fn cx_from_the_corpus() {
        let a = Authorities::default();
        // ADT-A01-01 PID-2
        let v = identifier(
            "1234567^4^M11^test^MR^University Hospital^19241011^19241012",
            &d(),
            &a,
        );
        assert_eq!(
            v,
            Some(json!({
                "type": {"coding": [{"system": V2_0203, "code": "MR", "display": "Medical record number"}]},
                "system": "urn:fhirlift:hl7v2:authority:test",
                "value": "1234567",
                "period": {"start": "1924-10-11", "end": "1924-10-12"}
            }))
        );
        // ADT-A01-01 PID-3, with a configured authority
        let v = identifier(
            "PATID1234^5^M11^test1&2.16.1&HCD^MR^GOOD HEALTH HOSPITAL",
            &d(),
            &hospital_table(),
        )
        .unwrap();
        assert_eq!(v["system"], "https://good-health.example/mrn");
        assert_eq!(v["value"], "PATID1234");
        // ORU-R01-01 PID-3: an ISO authority
        let v = identifier(
            "14^^^IA PHIMS Stage&2.16.840.1.114222.4.3.3.5.1.2&ISO^PI^IA Public Health Lab&2.16.840.1.114222.4.1.10411&ISO",
            &d(),
            &a,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({
                "type": {"coding": [{"system": V2_0203, "code": "PI", "display": "Patient internal identifier"}]},
                "system": "urn:oid:2.16.840.1.114222.4.3.3.5.1.2",
                "value": "14"
            })
        );
        // unknown type code: code only; SSN with a plain namespace
        let v = identifier("123456789^^^USSSA^ZZ", &d(), &a).unwrap();
        assert_eq!(
            v["type"],
            json!({"coding": [{"system": V2_0203, "code": "ZZ"}]})
        );
        assert_eq!(v["system"], "urn:fhirlift:hl7v2:authority:USSSA");
        // bad period dates are left out
        let v = identifier("X1^^^^^^20231301^2024", &d(), &a).unwrap();
        assert_eq!(v, json!({"value": "X1", "period": {"end": "2024"}}));
        assert_eq!(identifier("^^^test2", &d(), &a), None);
        assert_eq!(identifier("\"\"", &d(), &a), None);
        assert_eq!(identifier("", &d(), &a), None);
    }

    #[test]
    fn ei_from_the_corpus() {
        let a = Authorities::default();
        // ADT-A01-01 OBX-18
        assert_eq!(
            entity_identifier(
                "EI12.3^NI2^426d2726-51fc-89fe-a946-8596e80a80eb^GUID",
                &d(),
                &a
            ),
            Some(
                json!({"system": "urn:uuid:426d2726-51fc-89fe-a946-8596e80a80eb", "value": "EI12.3"})
            )
        );
        assert_eq!(
            entity_identifier("^^1.3.6.1.4.1.44750.1.2.2^ISO", &d(), &a),
            None
        );
        // ORU-R01-01 OBR-3
        assert_eq!(
            entity_identifier(
                "986^IA PHIMS Stage^2.16.840.1.114222.4.3.3.5.1.2^ISO",
                &d(),
                &a
            ),
            Some(json!({"system": "urn:oid:2.16.840.1.114222.4.3.3.5.1.2", "value": "986"}))
        );
        assert_eq!(
            entity_identifier("845439^GHH OE", &d(), &a),
            Some(json!({"system": "urn:fhirlift:hl7v2:authority:GHH-OE", "value": "845439"}))
        );
    }

    #[test]
    fn xpn_from_the_corpus() {
        // ADT-A01-01 PID-5, first repetition
        assert_eq!(
            human_name(
                "EVERYMAN&&&&Aniston^ADAM^A^III^Dr.^MD^D^^^19241012^^^^PF^Addsm",
                &d()
            ),
            Some(json!({
                "use": "usual",
                "family": "EVERYMAN",
                "given": ["ADAM", "A"],
                "prefix": ["Dr."],
                "suffix": ["III", "MD", "PF"],
                "period": {"start": "1924-10-12"}
            }))
        );
        assert_eq!(
            called_by_name(
                "EVERYMAN&&&&Aniston^ADAM^A^III^Dr.^MD^D^^^19241012^^^^PF^Addsm",
                &d()
            ),
            Some(json!({"use": "nickname", "given": ["Addsm"]}))
        );
        // second repetition: .12/.13 win over .10
        assert_eq!(
            human_name("Josh&&&&Bing^^stanley^^^^L^^^^^19241010^19241015", &d()),
            Some(json!({
                "use": "official",
                "family": "Josh",
                "given": ["stanley"],
                "period": {"start": "1924-10-10", "end": "1924-10-15"}
            }))
        );
        // ORU-R01-01 PID-5; several middle names; escapes and non-ASCII
        assert_eq!(
            human_name("Finn^Huckleberry^^^^^L", &d()),
            Some(json!({"use": "official", "family": "Finn", "given": ["Huckleberry"]}))
        );
        assert_eq!(
            human_name("Müller\\S\\Jörg^Anna^Maria  Luise^^^^XX", &d()),
            Some(json!({"family": "Müller^Jörg", "given": ["Anna", "Maria", "Luise"]}))
        );
        assert_eq!(human_name("^^^^^^L", &d()), None);
        assert_eq!(human_name("\"\"", &d()), None);
    }

    #[test]
    fn xad_from_the_corpus() {
        // ADT-A01-01 PID-11
        assert_eq!(
            address(
                "1000&Hospital Lane^Ste. 123^Ann Arbor ^MI^99999^USA^M^^&W^^^20000110&20000120^^^^^^^Near Highway",
                &d()
            ),
            Some(json!({
                "type": "postal",
                "line": ["1000", "Hospital Lane", "Ste. 123", "Near Highway"],
                "city": "Ann Arbor",
                "district": "W",
                "state": "MI",
                "postalCode": "99999",
                "country": "USA",
                "period": {"start": "2000-01-10", "end": "2000-01-20"}
            }))
        );
        // ADT-A01-01 NK1-4: billing, .13/.14 period
        assert_eq!(
            address(
                "2222&HOME&STREET^Highway^GREENSBORO^NC^27401-1020^US^BI^^jkdha&test^^^^20000110^20050111",
                &d()
            ),
            Some(json!({
                "use": "billing",
                "line": ["2222", "HOME", "STREET", "Highway"],
                "city": "GREENSBORO",
                "district": "test",
                "state": "NC",
                "postalCode": "27401-1020",
                "country": "US",
                "period": {"start": "2000-01-10", "end": "2005-01-11"}
            }))
        );
        // ORU-R01-01 PID-11
        assert_eq!(
            address("721 SPRING STREET^^GRINNELL^IA^50112^USA^H", &d()),
            Some(json!({
                "use": "home",
                "line": ["721 SPRING STREET"],
                "city": "GRINNELL",
                "state": "IA",
                "postalCode": "50112",
                "country": "USA"
            }))
        );
        assert_eq!(address("^^^^^^H", &d()), None);
        assert_eq!(address("", &d()), None);
    }

    #[test]
    fn xtn_from_the_corpus() {
        // ADT-A01-01 PID-13: CP → mobile, .12 wins over .1, rank, period
        assert_eq!(
            contact_point(
                "78788788^^CP^5555^^^1111^^^^^2222^20010110^20020110^^^^18",
                &d(),
                Some("home")
            ),
            Some(json!({
                "system": "phone",
                "value": "2222",
                "use": "mobile",
                "rank": 18,
                "period": {"start": "2001-01-10", "end": "2002-01-10"}
            }))
        );
        // PID-14 with the work default
        assert_eq!(
            contact_point("1111^^TDD", &d(), Some("work")),
            Some(json!({"system": "other", "value": "1111", "use": "work"}))
        );
        // PID-40: Internet without .4 → .1
        assert_eq!(
            contact_point("89898989^WPN^Internet", &d(), None),
            Some(json!({"system": "email", "value": "89898989", "use": "work"}))
        );
        // ROL-12: e-mail in .4
        assert_eq!(
            contact_point("^^Internet^fred@nnnn.com^111^813^8853999^1234", &d(), None),
            Some(json!({"system": "email", "value": "fred@nnnn.com"}))
        );
        // .3 empty, .4 valued → email
        assert_eq!(
            contact_point("^NET^^jo@example.org", &d(), Some("home")),
            Some(json!({"system": "email", "value": "jo@example.org"}))
        );
        // composed from .5-.8; an unmapped .2 gives no use (no default)
        assert_eq!(
            contact_point("^ORN^PH^^1^555^5551234^99", &d(), Some("home")),
            Some(json!({"system": "phone", "value": "+1 555 5551234 X99"}))
        );
        // IN1-7: BPN is not in the IG's 0201 map
        assert_eq!(
            contact_point("(555)555-5555^BPN^PH", &d(), None),
            Some(json!({"system": "phone", "value": "(555)555-5555"}))
        );
        // no equipment type → data-absent-reason on system
        assert_eq!(
            contact_point("555-1234", &d(), Some("home")),
            Some(json!({
                "_system": {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]},
                "value": "555-1234",
                "use": "home"
            }))
        );
        assert_eq!(contact_point("^PRN^PH", &d(), None), None);
        assert_eq!(contact_point("^^Internet", &d(), None), None);
        assert_eq!(contact_point("^^PH^^1^555", &d(), None), None);
        // rank 0 / junk is left out
        let v = contact_point("1^^PH^^^^^^^^^^^^^^^0", &d(), None).unwrap();
        assert!(v.get("rank").is_none());
    }

    #[test]
    fn numbers() {
        let n = |t: &str| number(t).map(|v| v.to_string());
        assert_eq!(n("60").as_deref(), Some("60"));
        assert_eq!(n(" -12 ").as_deref(), Some("-12"));
        assert_eq!(n("+7.5").as_deref(), Some("7.5"));
        assert_eq!(n(".5").as_deref(), Some("0.5"));
        assert_eq!(n("-.5").as_deref(), Some("-0.5"));
        assert_eq!(n("5.").as_deref(), Some("5"));
        assert_eq!(n("007").as_deref(), Some("7"));
        assert_eq!(n("-0").as_deref(), Some("0"));
        assert!(n("4.00").is_some());
        for bad in [
            "", " ", ".", "-", "+", "1e5", "NaN", "1,5", "1.2.3", "--1", "12 mg", "٣",
        ] {
            assert_eq!(number(bad), None, "{bad}");
        }
        assert_eq!(number(&"9".repeat(400)), None);
    }

    #[test]
    fn structured_numerics() {
        let sn = |raw: &str| structured_numeric(raw, &d());
        assert_eq!(
            sn(">^100"),
            Some(("valueQuantity", json!({"value": 100, "comparator": ">"})))
        );
        assert_eq!(sn("=^5"), Some(("valueQuantity", json!({"value": 5}))));
        assert_eq!(sn("^5.5"), Some(("valueQuantity", json!({"value": 5.5}))));
        assert_eq!(
            sn("<=^0.1"),
            Some(("valueQuantity", json!({"value": 0.1, "comparator": "<="})))
        );
        assert_eq!(
            sn("^10^-^20"),
            Some((
                "valueRange",
                json!({"low": {"value": 10}, "high": {"value": 20}})
            ))
        );
        assert_eq!(
            sn("^10^-"),
            Some(("valueRange", json!({"low": {"value": 10}})))
        );
        assert_eq!(
            sn("^1^:^128"),
            Some((
                "valueRatio",
                json!({"numerator": {"value": 1}, "denominator": {"value": 128}})
            ))
        );
        assert_eq!(
            sn(">^1^/^64"),
            Some((
                "valueRatio",
                json!({"numerator": {"value": 1, "comparator": ">"}, "denominator": {"value": 64}})
            ))
        );
        assert_eq!(sn("^2^+"), Some(("valueString", json!("2+"))));
        assert_eq!(sn("<>^10"), Some(("valueString", json!("<>10"))));
        assert_eq!(sn("^abc"), Some(("valueString", json!("abc"))));
        assert_eq!(sn("<^10^-^20"), Some(("valueString", json!("<10-20"))));
        assert_eq!(sn("^1^:"), Some(("valueString", json!("1:"))));
        assert_eq!(sn("^1^.^5"), Some(("valueString", json!("1.5"))));
        assert_eq!(sn("^1^^5"), Some(("valueString", json!("15"))));
        assert_eq!(sn("<"), Some(("valueString", json!("<"))));
        assert_eq!(sn(""), None);
        assert_eq!(sn("^^^"), None);
    }

    proptest! {
        #[test]
        fn nothing_panics(raw in "\\PC*", u in proptest::option::of("\\PC*")) {
            let d = d();
            let a = Authorities::default();
            let _ = identifier(&raw, &d, &a);
            let _ = entity_identifier(&raw, &d, &a);
            let _ = human_name(&raw, &d);
            let _ = called_by_name(&raw, &d);
            let _ = address(&raw, &d);
            let _ = contact_point(&raw, &d, u.as_deref());
            let _ = codeable_concept(&raw, &d);
            let _ = coding(&raw, &d);
            let _ = coding_system(&raw);
            let _ = quantity_unit(&raw, &d);
            let _ = number(&raw);
            let _ = structured_numeric(&raw, &d);
            let _ = identifier_type(&raw);
            let _ = a.system(Some(&raw), u.as_deref(), Some(&raw));
        }

        #[test]
        fn nothing_panics_on_v2_shaped_input(raw in "[A-Za-z0-9 .:+<>=/\\-^&~\\\\\"é]{0,80}") {
            let d = d();
            let a = Authorities::default();
            let _ = (identifier(&raw, &d, &a), entity_identifier(&raw, &d, &a));
            let _ = (human_name(&raw, &d), address(&raw, &d), contact_point(&raw, &d, Some("home")));
            let _ = (codeable_concept(&raw, &d), coding(&raw, &d), quantity_unit(&raw, &d));
            let _ = structured_numeric(&raw, &d);
        }
    }
}
