//! Code system names and ids → FHIR system URIs: one table for the
//! mapping function `system_uri('SNOMED')` and the HL7v2 map's CWE.3
//! names, so that a code means the same system whichever source sent it.
//!
//! Keys are compared without case, spaces, `-` or `_`: OMOP CDM
//! vocabulary ids (`SNOMED`, `LOINC`, `RxNorm`, `ICD10CM`, `CVX`, `UCUM`,
//! ...), HL7 v2 table 0396 names (`LN`, `SCT`, `I10C`, `HL7nnnn`, ...) and
//! the OIDs of the same systems.

/// Whether `s` is an OID as FHIR's `oid` type writes it after `urn:oid:`:
/// two or more arcs of digits, the first 0, 1 or 2, none with a leading 0.
pub fn is_oid(s: &str) -> bool {
    let mut arcs = s.split('.');
    matches!(arcs.next(), Some("0" | "1" | "2"))
        && s.contains('.')
        && arcs.all(|a| {
            !a.is_empty()
                && a.bytes().all(|b| b.is_ascii_digit())
                && (a == "0" || !a.starts_with('0'))
        })
}

/// (names, URI): every spelling of one system.
const SYSTEMS: &[(&[&str], &str)] = &[
    (
        &["LN", "LOINC", "2.16.840.1.113883.6.1"],
        "http://loinc.org",
    ),
    (
        &[
            "SCT",
            "SNM3",
            "SCT2",
            "SNOMED",
            "SNOMEDCT",
            "SNOMEDCTUS",
            "2.16.840.1.113883.6.96",
        ],
        "http://snomed.info/sct",
    ),
    (
        &["UCUM", "2.16.840.1.113883.6.8"],
        "http://unitsofmeasure.org",
    ),
    (
        &["CVX", "2.16.840.1.113883.12.292"],
        "http://hl7.org/fhir/sid/cvx",
    ),
    (
        &["MVX", "2.16.840.1.113883.12.227"],
        "http://hl7.org/fhir/sid/mvx",
    ),
    (
        &["NDC", "2.16.840.1.113883.6.69"],
        "http://hl7.org/fhir/sid/ndc",
    ),
    (
        &["RXNORM", "RXNORMEXTENSION", "2.16.840.1.113883.6.88"],
        "http://www.nlm.nih.gov/research/umls/rxnorm",
    ),
    (
        &["I10", "ICD10", "2.16.840.1.113883.6.3"],
        "http://hl7.org/fhir/sid/icd-10",
    ),
    (
        &["I10C", "ICD10CM", "2.16.840.1.113883.6.90"],
        "http://hl7.org/fhir/sid/icd-10-cm",
    ),
    (
        &["I9C", "ICD9CM", "2.16.840.1.113883.6.103"],
        "http://hl7.org/fhir/sid/icd-9-cm",
    ),
    (
        &["I10P", "ICD10PCS", "2.16.840.1.113883.6.4"],
        "http://www.cms.gov/Medicare/Coding/ICD10",
    ),
    (
        &["C4", "CPT4", "CPT", "2.16.840.1.113883.6.12"],
        "http://www.ama-assn.org/go/cpt",
    ),
    (
        &["HCPCS", "2.16.840.1.113883.6.285"],
        "urn:oid:2.16.840.1.113883.6.285",
    ),
    (
        &["CDCREC", "RACE", "ETHNICITY", "2.16.840.1.113883.6.238"],
        "urn:oid:2.16.840.1.113883.6.238",
    ),
    (
        &["ATC", "2.16.840.1.113883.6.73"],
        "http://www.whocc.no/atc",
    ),
    (
        &["NUCC", "2.16.840.1.113883.6.101"],
        "http://nucc.org/provider-taxonomy",
    ),
    (
        &["NPI", "2.16.840.1.113883.4.6"],
        "http://hl7.org/fhir/sid/us-npi",
    ),
];

/// Lower case without spaces, `-` or `_`: `RxNorm Extension` →
/// `rxnormextension`.
fn folded(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, ' ' | '-' | '_'))
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The FHIR system URI of a code system name or id; `HL7nnnn` (exactly
/// four digits) is terminology.hl7.org's `v2-nnnn`. `None` for a name
/// the table does not know.
pub fn system_uri(name: &str) -> Option<String> {
    let key = folded(name.trim());
    if let Some(digits) = key.strip_prefix("hl7")
        && digits.len() == 4
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Some(format!("http://terminology.hl7.org/CodeSystem/v2-{digits}"));
    }
    SYSTEMS
        .iter()
        .find(|(names, _)| names.iter().any(|n| folded(n) == key))
        .map(|(_, uri)| (*uri).to_owned())
}

/// Every name the table knows, for "did you mean" hints.
pub fn known_names() -> impl Iterator<Item = &'static str> {
    SYSTEMS
        .iter()
        .flat_map(|(names, _)| names.iter().copied())
        .filter(|n| !n.starts_with(|c: char| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omop_v2_and_oid_spellings_name_one_system() {
        for name in ["SNOMED", "SCT", "snomed ct", "2.16.840.1.113883.6.96"] {
            assert_eq!(
                system_uri(name).as_deref(),
                Some("http://snomed.info/sct"),
                "{name}"
            );
        }
        assert_eq!(
            system_uri("RxNorm Extension").as_deref(),
            Some("http://www.nlm.nih.gov/research/umls/rxnorm")
        );
        assert_eq!(system_uri("ICD10CM"), system_uri("I10C"));
        assert_eq!(
            system_uri("HL70203").as_deref(),
            Some("http://terminology.hl7.org/CodeSystem/v2-0203")
        );
        assert_eq!(system_uri("HL7020"), None);
        assert_eq!(system_uri("Nonesuch"), None);
        assert!(known_names().any(|n| n == "LOINC"));
    }
}
