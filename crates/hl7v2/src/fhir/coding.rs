//! CWE / CE / CNE → CodeableConcept and Coding, v2 coding-system names
//! (CWE.3) → URIs (mapping sheet §4), and OBX-6 units → a Quantity's unit,
//! system and code.

use serde_json::{Map, Value};

use super::Composite;
use fhirlift_core::terminology::is_oid;

use super::datatypes::{CODING_SYSTEM_FALLBACK_BASE, dashed, text};
use crate::Delimiters;

/// The CWE triplets: (code, display, system name, version).
const TRIPLETS: [(usize, usize, usize, usize); 3] = [(1, 2, 3, 7), (4, 5, 6, 8), (10, 11, 12, 13)];

/// The system URI for a CWE.3-style name: [`coding_system`]; an OID
/// (`2.16.840.1.113883.6.1`) as `urn:oid:`; a URI (a scheme, then no
/// whitespace) as it is; a local name of letters, digits, `.`, `-`, `_`
/// and spaces as `urn:fhirlift:hl7v2:coding-system:<name>` (spaces → `-`).
/// Anything else is no coding system's name (free text in CWE.3, such as
/// `POST 12H CFST:MCNC:PT:SER/PLAS:QN`): no system, rather than a system
/// that is not a URI.
fn system_for_name(name: &str) -> Option<String> {
    let name = name.trim();
    if let Some(known) = coding_system(name) {
        return Some(known);
    }
    if is_oid(name) {
        return Some(format!("urn:oid:{name}"));
    }
    if is_uri(name) {
        return Some(name.to_owned());
    }
    let local = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ' '));
    (local && !name.is_empty()).then(|| format!("{CODING_SYSTEM_FALLBACK_BASE}{}", dashed(name)))
}

/// A scheme (`http`, `urn`, ...), `:`, and a rest with no whitespace;
/// `http(s):` needs `//` and a host.
fn is_uri(name: &str) -> bool {
    let Some((scheme, rest)) = name.split_once(':') else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let rest_ok = !rest.is_empty() && !rest.chars().any(char::is_whitespace);
    let web = matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https");
    scheme_ok && rest_ok && (!web || rest.starts_with("//") && rest.len() > 2)
}

/// Text as a FHIR `code`: trimmed, each run of whitespace one space (a
/// code holds single spaces only: `A  B` would be refused as R4).
pub fn code_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// One triplet as a Coding, when it has a code.
fn triplet_coding(
    c: &Composite,
    (code, display, system, version): (usize, usize, usize, usize),
) -> Option<Map<String, Value>> {
    let code = code_text(&text(c, code)?);
    let mut m = Map::new();
    if let Some(system) = text(c, system).and_then(|name| system_for_name(&name)) {
        m.insert("system".into(), system.into());
    }
    if let Some(v) = text(c, version) {
        m.insert("version".into(), v.into());
    }
    m.insert("code".into(), code.into());
    if let Some(display) = text(c, display) {
        m.insert("display".into(), display.into());
    }
    Some(m)
}

/// CWE / CE / CNE → CodeableConcept: codings from the triplets (1,2,3),
/// (4,5,6), (10,11,12) that have a code (system by [`system_for_name`]:
/// a known name, an OID, a URI, a local name under
/// `urn:fhirlift:hl7v2:coding-system:`; free text, no system), with
/// versions .7 / .8 / .13; a repeated system+code is kept once. text = .9,
/// else the display of a triplet that has no code (so it is not lost).
/// `None` when empty.
pub fn codeable_concept(raw: &str, d: &Delimiters) -> Option<Value> {
    let c = Composite::new(raw, d);
    let mut codings: Vec<Map<String, Value>> = Vec::new();
    let mut orphan_display = None;
    for t in TRIPLETS {
        match triplet_coding(&c, t) {
            Some(coding) => {
                let same = |o: &Map<String, Value>| {
                    o.get("system") == coding.get("system") && o.get("code") == coding.get("code")
                };
                if !codings.iter().any(same) {
                    codings.push(coding);
                }
            }
            None => {
                if orphan_display.is_none() {
                    orphan_display = text(&c, t.1);
                }
            }
        }
    }
    let label = text(&c, 9).or(orphan_display);
    if codings.is_empty() && label.is_none() {
        return None;
    }
    let mut m = Map::new();
    if !codings.is_empty() {
        m.insert(
            "coding".into(),
            Value::Array(codings.into_iter().map(Value::Object).collect()),
        );
    }
    if let Some(t) = label {
        m.insert("text".into(), t.into());
    }
    Some(Value::Object(m))
}

/// The same, as a single Coding (the first triplet that has a code), for
/// Coding-typed elements.
pub fn coding(raw: &str, d: &Delimiters) -> Option<Value> {
    let c = Composite::new(raw, d);
    TRIPLETS
        .into_iter()
        .find_map(|t| triplet_coding(&c, t))
        .map(Value::Object)
}

/// §4: v2 coding-system names → URI (any case): LN, SCT / SNM3 / SCT2,
/// UCUM, CVX, MVX, NDC, RXNORM, I10, I10C, I9C, C4, CDCREC, `HL7nnnn`
/// (exactly four digits) → THO `v2-nnnn`, and the other names and OIDs of
/// the same systems: `fhirlift_core::terminology`, the table mappings'
/// `system_uri()` reads too.
pub fn coding_system(name: &str) -> Option<String> {
    fhirlift_core::terminology::system_uri(name)
}

/// OBX-6 style CWE units → (unit, system, code) for a Quantity: unit = .2
/// else .1; code and system only when .1 and .3 are both valued (UCUM →
/// `http://unitsofmeasure.org`, other names as in [`codeable_concept`]).
/// `ISO` / `ISO+` name no unit system, so they give neither system nor
/// code (a Quantity code needs a system).
pub fn quantity_unit(
    raw: &str,
    d: &Delimiters,
) -> (Option<String>, Option<String>, Option<String>) {
    let c = Composite::new(raw, d);
    let code = text(&c, 1);
    let unit = text(&c, 2).or_else(|| code.clone());
    let name = text(&c, 3).filter(|n| !matches!(n.to_ascii_uppercase().as_str(), "ISO" | "ISO+"));
    match (code, name.and_then(|n| system_for_name(&n))) {
        (Some(code), Some(system)) => (unit, Some(system), Some(code)),
        _ => (unit, None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d() -> Delimiters {
        Delimiters::default()
    }

    #[test]
    fn cwe_from_the_corpus() {
        // ORU-R01-01 OBX-3: unknown system name, version, text
        assert_eq!(
            codeable_concept(
                "625-4^Bacteria identified in Stool by Culture^XYZ^^^^2.33^^result1",
                &d()
            ),
            Some(json!({
                "coding": [{
                    "system": "urn:fhirlift:hl7v2:coding-system:XYZ",
                    "version": "2.33",
                    "code": "625-4",
                    "display": "Bacteria identified in Stool by Culture"
                }],
                "text": "result1"
            }))
        );
        // ADT-A01-01 PID-15: two triplets with versions
        assert_eq!(
            codeable_concept(
                "ara^^HL70296^eng^English-us^HL70296^v2^v2.1^TextInEnglish",
                &d()
            ),
            Some(json!({
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0296", "version": "v2", "code": "ara"},
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0296", "version": "v2.1", "code": "eng", "display": "English-us"}
                ],
                "text": "TextInEnglish"
            }))
        );
        // ORU-R01-01 OBX-5 (CWE) and PID-10 (CDCREC)
        assert_eq!(
            codeable_concept("27268008^Salmonella^SCT^^^^^^Salmonella species", &d()),
            Some(json!({
                "coding": [{"system": "http://snomed.info/sct", "code": "27268008", "display": "Salmonella"}],
                "text": "Salmonella species"
            }))
        );
        assert_eq!(
            codeable_concept("2106-3^White^CDCREC^^^^04/24/2007", &d()),
            Some(json!({
                "coding": [{"system": "urn:oid:2.16.840.1.113883.6.238", "version": "04/24/2007", "code": "2106-3", "display": "White"}]
            }))
        );
        // VXU-V04-01 RXA-5, RXA-17 (MVX), OBX-5 with a URI-like name
        assert_eq!(
            coding("49281021588^TENIVAC^NDC", &d()),
            Some(
                json!({"system": "http://hl7.org/fhir/sid/ndc", "code": "49281021588", "display": "TENIVAC"})
            )
        );
        assert_eq!(
            coding("PMC^Sanofi Pasteur^MVX", &d()).unwrap()["system"],
            "http://hl7.org/fhir/sid/mvx"
        );
        assert_eq!(
            coding("X^x^urn:oid:1.2.3", &d()).unwrap()["system"],
            "urn:oid:1.2.3"
        );
        // text only (ORU-R01-01 OBX-17), display without a code, nothing
        assert_eq!(
            codeable_concept("^^^^^^^^Bacterial Culture", &d()),
            Some(json!({"text": "Bacterial Culture"}))
        );
        assert_eq!(
            codeable_concept("^Headache", &d()),
            Some(json!({"text": "Headache"}))
        );
        assert_eq!(coding("^Headache", &d()), None);
        assert_eq!(coding("^^^A1^Alt^L", &d()).unwrap()["code"], "A1");
        assert_eq!(codeable_concept("^^^^^^^^", &d()), None);
        // local name with a space, no name → no system, repeated coding kept once
        assert_eq!(
            codeable_concept("A^Alpha^99 LOCAL^A^Alpha again^99 LOCAL^^^^B", &d()),
            Some(json!({
                "coding": [
                    {"system": "urn:fhirlift:hl7v2:coding-system:99-LOCAL", "code": "A", "display": "Alpha"},
                    {"code": "B"}
                ]
            }))
        );
        // regression: free text in CWE.3 (a LOINC long name) became a
        // `system` with spaces; it names no coding system, so no system
        let free = codeable_concept("1-8^Cortisol^POST 12H CFST:MCNC:PT:SER/PLAS:QN", &d());
        assert_eq!(
            free,
            Some(json!({ "coding": [{ "code": "1-8", "display": "Cortisol" }] }))
        );
        // an OID: the known system's URI (LOINC's), else urn:oid
        assert_eq!(
            coding("X^x^2.16.840.1.113883.6.1", &d()).unwrap()["system"],
            "http://loinc.org"
        );
        assert_eq!(
            coding("X^x^2.16.840.1.113883.19.5", &d()).unwrap()["system"],
            "urn:oid:2.16.840.1.113883.19.5"
        );
        assert_eq!(
            coding("X^x^https://example.org/codes", &d()).unwrap()["system"],
            "https://example.org/codes"
        );
        assert_eq!(coding("X^x^http:bad", &d()).unwrap().get("system"), None);
        assert_eq!(coding("X^x^L/OCAL", &d()).unwrap().get("system"), None);
    }

    #[test]
    fn coding_systems() {
        assert_eq!(coding_system("LN").as_deref(), Some("http://loinc.org"));
        assert_eq!(coding_system("ln").as_deref(), Some("http://loinc.org"));
        assert_eq!(
            coding_system("SNM3").as_deref(),
            Some("http://snomed.info/sct")
        );
        assert_eq!(
            coding_system("CVX").as_deref(),
            Some("http://hl7.org/fhir/sid/cvx")
        );
        assert_eq!(
            coding_system("I10C").as_deref(),
            Some("http://hl7.org/fhir/sid/icd-10-cm")
        );
        assert_eq!(
            coding_system("C4").as_deref(),
            Some("http://www.ama-assn.org/go/cpt")
        );
        assert_eq!(
            coding_system("HL70078").as_deref(),
            Some("http://terminology.hl7.org/CodeSystem/v2-0078")
        );
        assert_eq!(
            coding_system("hl70005").as_deref(),
            Some("http://terminology.hl7.org/CodeSystem/v2-0005")
        );
        assert_eq!(coding_system("HL7nnnn"), None);
        assert_eq!(coding_system("HL7280"), None);
        assert_eq!(coding_system("HL700780"), None);
        assert_eq!(coding_system("HL7٠٠٧٨"), None);
        assert_eq!(coding_system(""), None);
    }

    #[test]
    fn units() {
        // VXU-V04-01 RXA-7
        assert_eq!(
            quantity_unit("mL^mL^UCUM", &d()),
            (
                Some("mL".into()),
                Some("http://unitsofmeasure.org".into()),
                Some("mL".into())
            )
        );
        // ADT-A01-01 OBX-6
        assert_eq!(
            quantity_unit("beats/min^^ISO", &d()),
            (Some("beats/min".into()), None, None)
        );
        assert_eq!(
            quantity_unit("kg^^ISO+", &d()),
            (Some("kg".into()), None, None)
        );
        assert_eq!(
            quantity_unit("mg/dL^milligram per deciliter", &d()),
            (Some("milligram per deciliter".into()), None, None)
        );
        assert_eq!(
            quantity_unit("^per minute^UCUM", &d()),
            (Some("per minute".into()), None, None)
        );
        assert_eq!(
            quantity_unit("[lb_av]^pound^UCUM", &d()),
            (
                Some("pound".into()),
                Some("http://unitsofmeasure.org".into()),
                Some("[lb_av]".into())
            )
        );
        assert_eq!(quantity_unit("", &d()), (None, None, None));
    }

    /// Regression (found by tests/mutations.rs of the connector): a code
    /// with doubled spaces inside (`+  XC8`) was written as it was, and
    /// R4 refuses it.
    #[test]
    fn codes_hold_single_spaces_only() {
        assert_eq!(code_text(" +  XC8\t A "), "+ XC8 A");
        assert_eq!(code_text("MR"), "MR");
        assert_eq!(
            crate::fhir::identifier_type("M  R")["coding"][0]["code"],
            "M R"
        );
    }
}
