//! HL7 v2 code tables → FHIR R4 codes (mapping sheet §7 and the IG's
//! vocabulary maps).
//!
//! Every lookup trims its input and returns `None` for a code it does not
//! map, so the caller can keep the original code and warn. Codes are
//! compared case-sensitively (v2 codes are upper case), except where a
//! function says otherwise (0001 sex, 0202's `Internet`, languages, trigger
//! events).

/// THO: `http://terminology.hl7.org/CodeSystem/`.
pub const THO: &str = "http://terminology.hl7.org/CodeSystem/";
/// THO v2-0203 (identifier type).
pub const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
/// THO v2-0004 (patient class), for the 0004 codes v3-ActCode lacks.
pub const V2_0004: &str = "http://terminology.hl7.org/CodeSystem/v2-0004";
/// THO v3-ActCode (Encounter.class).
pub const V3_ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
/// THO v3-MaritalStatus.
pub const V3_MARITAL_STATUS: &str = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus";
/// THO v3-NullFlavor.
pub const V3_NULL_FLAVOR: &str = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor";
/// THO v3-ObservationInterpretation.
pub const V3_OBSERVATION_INTERPRETATION: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
/// THO v3-RoleCode (relationships).
pub const V3_ROLE_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-RoleCode";
/// THO diagnosis-role (Encounter.diagnosis.use).
pub const DIAGNOSIS_ROLE: &str = "http://terminology.hl7.org/CodeSystem/diagnosis-role";

/// 0001 administrative sex → Patient.gender (upper or lower case).
pub fn gender(code: &str) -> Option<&'static str> {
    Some(match code.trim().to_ascii_uppercase().as_str() {
        "M" => "male",
        "F" => "female",
        "O" | "A" | "N" => "other",
        "U" => "unknown",
        _ => return None,
    })
}

/// 0002 marital status → (system, code, display): THO v3-MaritalStatus,
/// or v3-NullFlavor for U (UNK), O (OTH) and T (NAVU). N → A and O, T
/// follow the IG (FC drops them).
pub fn marital_status(code: &str) -> Option<(&'static str, &'static str, &'static str)> {
    let m = |c, d| Some((V3_MARITAL_STATUS, c, d));
    let n = |c, d| Some((V3_NULL_FLAVOR, c, d));
    match code.trim() {
        "A" | "E" => m("L", "Legally Separated"),
        "B" => m("U", "unmarried"),
        "C" => m("C", "Common Law"),
        "D" => m("D", "Divorced"),
        "G" | "P" | "R" => m("T", "Domestic partner"),
        "I" => m("I", "Interlocutory"),
        "M" => m("M", "Married"),
        "N" => m("A", "Annulled"),
        "S" => m("S", "Never Married"),
        "W" => m("W", "Widowed"),
        "U" => n("UNK", "unknown"),
        "O" => n("OTH", "other"),
        "T" => n("NAVU", "not available"),
        _ => None,
    }
}

/// 0004 patient class → Encounter.class (system, code, display), IG row:
/// E, I, O, P → v3-ActCode; R, B, C, N, U stay v2-0004 codes.
pub fn encounter_class(code: &str) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match code.trim() {
        "E" => (V3_ACT_CODE, "EMER", "emergency"),
        "I" => (V3_ACT_CODE, "IMP", "inpatient encounter"),
        "O" => (V3_ACT_CODE, "AMB", "ambulatory"),
        "P" => (V3_ACT_CODE, "PRENC", "pre-admission"),
        "R" => (V2_0004, "R", "Recurring patient"),
        "B" => (V2_0004, "B", "Obstetrics"),
        "C" => (V2_0004, "C", "Commercial Account"),
        "N" => (V2_0004, "N", "Not Applicable"),
        "U" => (V2_0004, "U", "Unknown"),
        _ => return None,
    })
}

/// 0004 patient class → Encounter.status (IG status row; the fallback when
/// neither the trigger event nor PV1-45 decides).
pub fn encounter_status_from_class(code: &str) -> Option<&'static str> {
    Some(match code.trim() {
        "E" | "I" | "O" | "R" | "B" | "C" | "N" => "in-progress",
        "P" => "planned",
        "U" => "unknown",
        _ => return None,
    })
}

/// Trigger event (MSH-9.2, e.g. `A01`, any case) → Encounter.status, IG map
/// Event\[EncounterStatus\]: A01, A02, A13 in-progress; A03 finished;
/// A04, A05 planned; A08 unknown; A11 cancelled. Other events have no row.
pub fn encounter_status_from_event(event: &str) -> Option<&'static str> {
    Some(match event.trim().to_ascii_uppercase().as_str() {
        "A01" | "A02" | "A13" => "in-progress",
        "A03" => "finished",
        "A04" | "A05" => "planned",
        "A08" => "unknown",
        "A11" => "cancelled",
        _ => return None,
    })
}

/// 0085 observation result status → Observation.status (IG), with the
/// sheet's choices where the IG has no target:
/// - I (specimen in lab, no result yet), O (order detail only) and S
///   (partial) → `registered`: nothing final exists yet;
/// - R (not yet verified) → `preliminary`;
/// - U (changed to final without retransmitting) → `final`.
///
/// B, V and N stay `None`: the caller decides (N also needs the
/// data-absent-reason `not-asked`).
pub fn observation_status(code: &str) -> Option<&'static str> {
    Some(match code.trim() {
        "A" => "amended",
        "C" => "corrected",
        "D" | "W" => "entered-in-error",
        "F" | "U" => "final",
        "I" | "O" | "S" => "registered",
        "P" | "R" => "preliminary",
        "X" => "cancelled",
        _ => return None,
    })
}

/// The 0078 codes the IG maps one to one onto v3-ObservationInterpretation.
const INTERPRETATIONS: &[&str] = &[
    "L", "H", "LL", "HH", "LU", "HU", "<", ">", "A", "AA", "N", "S", "R", "I", "SDD", "NCL", "IE",
    "NS", "B", "D", "U", "W", "E", "EX", "EXP", "UNE", "DET", "ND", "NEG", "POS", "NR", "RR", "WR",
    "IND", "CAR", "SYN-R", "SYN-S", "MS", "VS",
];

/// 0078 abnormal flag → (THO v3-ObservationInterpretation, code), for the
/// IG's one-to-one list (AC, HM, OBX, QCF, TOX have no target).
pub fn interpretation(code: &str) -> Option<(&'static str, &'static str)> {
    let code = code.trim();
    INTERPRETATIONS
        .iter()
        .find(|c| **c == code)
        .map(|c| (V3_OBSERVATION_INTERPRETATION, *c))
}

/// 0123 result status (OBR-25) → DiagnosticReport.status. A (some results
/// available) → `partial`, as FC does: the IG has no target for it, and
/// `partial` is what the v2 definition says. M, N, Y, Z → `None`.
pub fn report_status(code: &str) -> Option<&'static str> {
    Some(match code.trim() {
        "O" | "I" | "S" => "registered",
        "P" => "preliminary",
        "C" => "corrected",
        "R" | "A" => "partial",
        "F" => "final",
        "X" => "cancelled",
        _ => return None,
    })
}

/// 0200 name type → HumanName.use.
pub fn name_use(code: &str) -> Option<&'static str> {
    Some(match code.trim() {
        "L" | "R" => "official",
        "D" => "usual",
        "M" => "maiden",
        "N" => "nickname",
        "BAD" => "old",
        "MSK" => "anonymous",
        "NAV" | "TEMP" => "temp",
        _ => return None,
    })
}

/// 0201 telecom use (XTN.2) → ContactPoint.use.
pub fn telecom_use(code: &str) -> Option<&'static str> {
    Some(match code.trim() {
        "PRN" => "home",
        "WPN" => "work",
        "PRS" => "mobile",
        _ => return None,
    })
}

/// 0202 telecom equipment type (XTN.3) → (ContactPoint.system, the use the
/// code implies: CP → `mobile`). `Internet` and `X.400` in any case.
pub fn telecom_system(code: &str) -> Option<(&'static str, Option<&'static str>)> {
    let code = code.trim();
    if code.eq_ignore_ascii_case("Internet") || code.eq_ignore_ascii_case("X.400") {
        return Some(("email", None));
    }
    Some(match code {
        "PH" => ("phone", None),
        "FX" => ("fax", None),
        "BP" => ("pager", None),
        "CP" => ("phone", Some("mobile")),
        "MD" | "SAT" | "TDD" | "TTY" => ("other", None),
        _ => return None,
    })
}

/// 0203 identifier type → its THO v2-0203 display (the sheet's list plus
/// the other common codes).
pub fn identifier_type_display(code: &str) -> Option<&'static str> {
    Some(match code.trim() {
        "MR" => "Medical record number",
        "PI" => "Patient internal identifier",
        "PT" => "Patient external identifier",
        "SS" => "Social Security number",
        "SB" => "Social Beneficiary Identifier",
        "DL" => "Driver's license number",
        "PPN" => "Passport number",
        "AN" => "Account number",
        "VN" => "Visit number",
        "NPI" => "National provider identifier",
        "PRN" => "Provider number",
        "EI" => "Employee number",
        "MA" => "Patient Medicaid number",
        "MC" => "Patient's Medicare number",
        "NI" => "National unique individual identifier",
        "JHN" => "Jurisdictional health number (Canada)",
        "XX" => "Organization identifier",
        "FI" => "Facility ID",
        "U" => "Unspecified identifier",
        "PLAC" => "Placer Identifier",
        "FILL" => "Filler Identifier",
        "PGN" => "Placer Group Number",
        "MB" => "Member Number",
        "MI" => "Military ID number",
        "DN" => "Doctor number",
        "MD" => "Medical License number",
        "DEA" => "Drug Enforcement Administration registration number",
        "RN" => "Registered Nurse Number",
        "TAX" => "Tax ID number",
        "BR" => "Birth registry number",
        "EN" => "Employer number",
        "PN" => "Person number",
        "SN" => "Subscriber Number",
        "NH" => "National Health Plan Identifier",
        "NIIP" => "National Insurance Payor Identifier (Payor)",
        "ANON" => "Anonymous identifier",
        "HC" => "Health Card Number",
        "ACSN" => "Accession ID",
        _ => return None,
    })
}

/// 0127 allergen type → AllergyIntolerance.category (IG: AA → biologic;
/// MA, MC → none).
pub fn allergy_category(code: &str) -> Option<&'static str> {
    Some(match code.trim() {
        "DA" => "medication",
        "FA" => "food",
        "EA" | "PA" | "LA" => "environment",
        "AA" => "biologic",
        _ => return None,
    })
}

/// 0128 allergy severity → AllergyIntolerance.criticality (SV high, MI low).
pub fn allergy_criticality(code: &str) -> Option<&'static str> {
    Some(match code.trim() {
        "SV" => "high",
        "MI" => "low",
        _ => return None,
    })
}

/// 0128 allergy severity → AllergyIntolerance.reaction.severity.
pub fn reaction_severity(code: &str) -> Option<&'static str> {
    Some(match code.trim() {
        "SV" => "severe",
        "MO" => "moderate",
        "MI" => "mild",
        _ => return None,
    })
}

/// 0322 completion status (RXA-20) → Immunization.status (empty RXA-20 is
/// `completed` too; that rule belongs to the caller).
pub fn immunization_status(code: &str) -> Option<&'static str> {
    Some(match code.trim() {
        "CP" | "PA" => "completed",
        "RE" | "NA" => "not-done",
        _ => return None,
    })
}

/// XAD.7 address type → Address.use (H home, B/O work, BI billing, BA old,
/// C temp). M and SH are Address.type: see [`address_type`].
pub fn address_use(code: &str) -> Option<&'static str> {
    Some(match code.trim() {
        "H" => "home",
        "B" | "O" => "work",
        "BI" => "billing",
        "BA" => "old",
        "C" => "temp",
        _ => return None,
    })
}

/// XAD.7 address type → Address.type (M mailing, SH shipping → postal).
pub fn address_type(code: &str) -> Option<&'static str> {
    match code.trim() {
        "M" | "SH" => Some("postal"),
        _ => None,
    }
}

/// 0063 relationship → (THO v3-RoleCode, code). EME, UNK, OTH and the
/// codes without a RoleCode equivalent → `None`.
pub fn relationship(code: &str) -> Option<(&'static str, &'static str)> {
    let role = match code.trim() {
        "SPO" => "SPS",
        "SEL" => "ONESELF",
        "DOM" => "SIGOTHR",
        "MTH" => "MTH",
        "FTH" => "FTH",
        "CHD" => "CHILD",
        "SIB" => "SIB",
        "BRO" => "BRO",
        "SIS" => "SIS",
        "GRD" => "GUARD",
        "PAR" => "PRN",
        "FND" => "FRND",
        "GRP" => "GRPRN",
        "SON" => "SON",
        "DAU" => "DAU",
        "GCH" => "GRNDCHILD",
        "NCH" => "NCHILD",
        "SCH" => "STPCHLD",
        "FCH" => "CHLDFOST",
        "STP" => "STPPRN",
        "EXF" => "EXT",
        _ => return None,
    };
    Some((V3_ROLE_CODE, role))
}

/// 0052 diagnosis type → THO diagnosis-role code: A → AD (IG), W → CC,
/// F → DD (FC; the IG maps only A).
pub fn diagnosis_role(code: &str) -> Option<&'static str> {
    Some(match code.trim() {
        "A" => "AD",
        "W" => "CC",
        "F" => "DD",
        _ => return None,
    })
}

/// ISO 639-1 codes: the two-letter codes that pass through [`language`].
const ISO_639_1: &[&str] = &[
    "aa", "ab", "ae", "af", "ak", "am", "an", "ar", "as", "av", "ay", "az", "ba", "be", "bg", "bh",
    "bi", "bm", "bn", "bo", "br", "bs", "ca", "ce", "ch", "co", "cr", "cs", "cu", "cv", "cy", "da",
    "de", "dv", "dz", "ee", "el", "en", "eo", "es", "et", "eu", "fa", "ff", "fi", "fj", "fo", "fr",
    "fy", "ga", "gd", "gl", "gn", "gu", "gv", "ha", "he", "hi", "ho", "hr", "ht", "hu", "hy", "hz",
    "ia", "id", "ie", "ig", "ii", "ik", "io", "is", "it", "iu", "ja", "jv", "ka", "kg", "ki", "kj",
    "kk", "kl", "km", "kn", "ko", "kr", "ks", "ku", "kv", "kw", "ky", "la", "lb", "lg", "li", "ln",
    "lo", "lt", "lu", "lv", "mg", "mh", "mi", "mk", "ml", "mn", "mr", "ms", "mt", "my", "na", "nb",
    "nd", "ne", "ng", "nl", "nn", "no", "nr", "nv", "ny", "oc", "oj", "om", "or", "os", "pa", "pi",
    "pl", "ps", "pt", "qu", "rm", "rn", "ro", "ru", "rw", "sa", "sc", "sd", "se", "sg", "si", "sk",
    "sl", "sm", "sn", "so", "sq", "sr", "ss", "st", "su", "sv", "sw", "ta", "te", "tg", "th", "ti",
    "tk", "tl", "tn", "to", "tr", "ts", "tt", "tw", "ty", "ug", "uk", "ur", "uz", "ve", "vi", "vo",
    "wa", "wo", "xh", "yi", "yo", "za", "zh", "zu",
];

/// ISO 639-2 (bibliographic and terminologic forms) → BCP-47 primary
/// language subtag. Languages without a two-letter code keep their
/// three-letter code, which is itself a valid BCP-47 subtag.
const ISO_639_2: &[(&str, &str)] = &[
    ("eng", "en"),
    ("spa", "es"),
    ("fre", "fr"),
    ("fra", "fr"),
    ("ger", "de"),
    ("deu", "de"),
    ("ita", "it"),
    ("por", "pt"),
    ("rus", "ru"),
    ("chi", "zh"),
    ("zho", "zh"),
    ("jpn", "ja"),
    ("kor", "ko"),
    ("ara", "ar"),
    ("vie", "vi"),
    ("hin", "hi"),
    ("pol", "pl"),
    ("dut", "nl"),
    ("nld", "nl"),
    ("gre", "el"),
    ("ell", "el"),
    ("tur", "tr"),
    ("heb", "he"),
    ("per", "fa"),
    ("fas", "fa"),
    ("tgl", "tl"),
    ("hat", "ht"),
    ("cze", "cs"),
    ("ces", "cs"),
    ("dan", "da"),
    ("fin", "fi"),
    ("swe", "sv"),
    ("nor", "no"),
    ("hun", "hu"),
    ("rum", "ro"),
    ("ron", "ro"),
    ("ukr", "uk"),
    ("tha", "th"),
    ("ind", "id"),
    ("may", "ms"),
    ("msa", "ms"),
    ("ben", "bn"),
    ("pan", "pa"),
    ("urd", "ur"),
    ("guj", "gu"),
    ("tam", "ta"),
    ("tel", "te"),
    ("mar", "mr"),
    ("nep", "ne"),
    ("som", "so"),
    ("amh", "am"),
    ("tir", "ti"),
    ("orm", "om"),
    ("swa", "sw"),
    ("yor", "yo"),
    ("ibo", "ig"),
    ("hau", "ha"),
    ("alb", "sq"),
    ("sqi", "sq"),
    ("arm", "hy"),
    ("hye", "hy"),
    ("bur", "my"),
    ("mya", "my"),
    ("khm", "km"),
    ("lao", "lo"),
    ("bos", "bs"),
    ("hrv", "hr"),
    ("srp", "sr"),
    ("slo", "sk"),
    ("slk", "sk"),
    ("slv", "sl"),
    ("bul", "bg"),
    ("lit", "lt"),
    ("lav", "lv"),
    ("est", "et"),
    ("ice", "is"),
    ("isl", "is"),
    ("gle", "ga"),
    ("wel", "cy"),
    ("cym", "cy"),
    ("cat", "ca"),
    ("baq", "eu"),
    ("eus", "eu"),
    ("glg", "gl"),
    ("afr", "af"),
    ("geo", "ka"),
    ("kat", "ka"),
    ("aze", "az"),
    ("kaz", "kk"),
    ("uzb", "uz"),
    ("pus", "ps"),
    ("kur", "ku"),
    ("mon", "mn"),
    ("tib", "bo"),
    ("bod", "bo"),
    ("lat", "la"),
    ("yid", "yi"),
    ("smo", "sm"),
    ("ton", "to"),
    ("mah", "mh"),
    ("nav", "nv"),
    ("kin", "rw"),
    ("mlg", "mg"),
    ("mac", "mk"),
    ("mkd", "mk"),
    ("hmn", "hmn"),
    ("haw", "haw"),
    ("chr", "chr"),
    ("sgn", "sgn"),
];

/// Language code (PID-15, NK1-20) → BCP-47 (`urn:ietf:bcp:47`): ISO 639-2
/// codes for the common languages, and ISO 639-1 two-letter codes as they
/// are. Any case. Full tags (`en-US`) and unknown codes → `None`.
pub fn language(code: &str) -> Option<&'static str> {
    let code = code.trim().to_ascii_lowercase();
    if let Some(c) = ISO_639_1.iter().find(|c| **c == code) {
        return Some(c);
    }
    ISO_639_2
        .iter()
        .find(|(iso, _)| *iso == code)
        .map(|(_, bcp)| *bcp)
}

/// CDC Race & Ethnicity (CDCREC), the code system of US Core's race and
/// ethnicity extensions.
pub const CDCREC: &str = "urn:oid:2.16.840.1.113883.6.238";

/// Where a race or ethnicity code goes in its US Core extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CategorySlot {
    /// `ombCategory`: one of the OMB minimum categories (or UNK / ASKU).
    Omb,
    /// `detailed`: any other CDCREC code.
    Detailed,
}

impl CategorySlot {
    /// The sub-extension's url.
    pub fn url(self) -> &'static str {
        match self {
            CategorySlot::Omb => "ombCategory",
            CategorySlot::Detailed => "detailed",
        }
    }
}

/// A race or ethnicity code in FHIR: its slot, system, code and, for the
/// codes this table knows, the code system's display.
pub type Category = (CategorySlot, &'static str, String, Option<&'static str>);

/// Whether CWE.3 names CDCREC or its v2 tables (0005 race, 0189
/// ethnicity), or is empty.
fn cdc_system(system: Option<&str>) -> bool {
    match system.map(str::trim) {
        None | Some("") => true,
        Some(s) => matches!(
            s.to_ascii_uppercase().as_str(),
            "HL70005"
                | "HL70189"
                | "CDCREC"
                | "2.16.840.1.113883.6.238"
                | "URN:OID:2.16.840.1.113883.6.238"
        ),
    }
}

/// Whether a code has the CDCREC form `NNNN-N`.
pub fn cdc_code(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 6
        && b[4] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || c.is_ascii_digit())
}

/// UNK and ASKU, which US Core (v5 on) allows as an `ombCategory`.
fn null_flavor_category(code: &str) -> Option<Category> {
    match code {
        "UNK" => Some((
            CategorySlot::Omb,
            V3_NULL_FLAVOR,
            "UNK".into(),
            Some("unknown"),
        )),
        "ASKU" => Some((
            CategorySlot::Omb,
            V3_NULL_FLAVOR,
            "ASKU".into(),
            Some("asked but unknown"),
        )),
        _ => None,
    }
}

/// PID-10 race (CWE.1 code, CWE.3 system) → US Core race: the five OMB
/// categories as `ombCategory`, other CDCREC codes as `detailed`, UNK and
/// ASKU as v3-NullFlavor. A code of the CDCREC form is taken whatever
/// CWE.3 says (feeds misname the table: `HL7000`, `RACE`); `None` for a
/// local code ("W"): the caller keeps it as text only.
pub fn race(code: &str, _system: Option<&str>) -> Option<Category> {
    let code = code.trim();
    let omb = |display| Some((CategorySlot::Omb, CDCREC, code.to_owned(), Some(display)));
    match code {
        "1002-5" => omb("American Indian or Alaska Native"),
        "2028-9" => omb("Asian"),
        "2054-5" => omb("Black or African American"),
        "2076-8" => omb("Native Hawaiian or Other Pacific Islander"),
        "2106-3" => omb("White"),
        c if cdc_code(c) => Some((CategorySlot::Detailed, CDCREC, c.to_owned(), None)),
        c => null_flavor_category(c),
    }
}

/// PID-22 ethnicity → US Core ethnicity: 2135-2 and 2186-5 as
/// `ombCategory` (and table 0189's H and N, which mean the same, when
/// CWE.3 names 0189 or CDCREC or nothing), other CDCREC codes as
/// `detailed`, UNK / ASKU (and 0189's U) as v3-NullFlavor.
pub fn ethnicity(code: &str, system: Option<&str>) -> Option<Category> {
    let code = code.trim();
    let table_0189 = cdc_system(system);
    let omb =
        |code: &str, display| Some((CategorySlot::Omb, CDCREC, code.to_owned(), Some(display)));
    match code {
        "2135-2" => omb("2135-2", "Hispanic or Latino"),
        "2186-5" => omb("2186-5", "Not Hispanic or Latino"),
        "H" if table_0189 => omb("2135-2", "Hispanic or Latino"),
        "N" if table_0189 => omb("2186-5", "Not Hispanic or Latino"),
        "U" if table_0189 => null_flavor_category("UNK"),
        c if cdc_code(c) => Some((CategorySlot::Detailed, CDCREC, c.to_owned(), None)),
        c => null_flavor_category(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sex() {
        assert_eq!(gender("M"), Some("male"));
        assert_eq!(gender(" f "), Some("female"));
        assert_eq!(gender("A"), Some("other"));
        assert_eq!(gender("N"), Some("other"));
        assert_eq!(gender("U"), Some("unknown"));
        assert_eq!(gender("X"), None);
        assert_eq!(gender(""), None);
    }

    #[test]
    fn marital() {
        assert_eq!(
            marital_status("M"),
            Some((V3_MARITAL_STATUS, "M", "Married"))
        );
        assert_eq!(marital_status("A").map(|m| m.1), Some("L"));
        assert_eq!(marital_status("G").map(|m| m.1), Some("T"));
        assert_eq!(marital_status("B").map(|m| m.1), Some("U"));
        assert_eq!(
            marital_status("U"),
            Some((V3_NULL_FLAVOR, "UNK", "unknown"))
        );
        assert_eq!(marital_status("T").map(|m| m.1), Some("NAVU"));
        assert_eq!(marital_status("2"), None);
    }

    #[test]
    fn encounter() {
        assert_eq!(encounter_class("E").map(|c| c.1), Some("EMER"));
        assert_eq!(encounter_class("P").map(|c| c.1), Some("PRENC"));
        assert_eq!(encounter_class("B"), Some((V2_0004, "B", "Obstetrics")));
        assert_eq!(encounter_class("Z"), None);
        assert_eq!(encounter_status_from_class("P"), Some("planned"));
        assert_eq!(encounter_status_from_class("N"), Some("in-progress"));
        assert_eq!(encounter_status_from_class("U"), Some("unknown"));
        assert_eq!(encounter_status_from_event("A01"), Some("in-progress"));
        assert_eq!(encounter_status_from_event("A03"), Some("finished"));
        assert_eq!(encounter_status_from_event("a04"), Some("planned"));
        assert_eq!(encounter_status_from_event("A08"), Some("unknown"));
        assert_eq!(encounter_status_from_event("A11"), Some("cancelled"));
        assert_eq!(encounter_status_from_event("A13"), Some("in-progress"));
        assert_eq!(encounter_status_from_event("A14"), None);
        assert_eq!(encounter_status_from_event("R01"), None);
    }

    #[test]
    fn observations_and_reports() {
        assert_eq!(observation_status("F"), Some("final"));
        assert_eq!(observation_status("I"), Some("registered"));
        assert_eq!(observation_status("R"), Some("preliminary"));
        assert_eq!(observation_status("U"), Some("final"));
        assert_eq!(observation_status("W"), Some("entered-in-error"));
        assert_eq!(observation_status("X"), Some("cancelled"));
        for c in ["B", "V", "N", "f", ""] {
            assert_eq!(observation_status(c), None, "{c}");
        }
        assert_eq!(
            interpretation("HH"),
            Some((V3_OBSERVATION_INTERPRETATION, "HH"))
        );
        assert_eq!(interpretation("SYN-R").map(|i| i.1), Some("SYN-R"));
        assert_eq!(interpretation("<").map(|i| i.1), Some("<"));
        assert_eq!(interpretation("TOX"), None);
        assert_eq!(report_status("F"), Some("final"));
        assert_eq!(report_status("R"), Some("partial"));
        assert_eq!(report_status("S"), Some("registered"));
        assert_eq!(report_status("Y"), None);
    }

    #[test]
    fn names_and_telecoms() {
        assert_eq!(name_use("L"), Some("official"));
        assert_eq!(name_use("D"), Some("usual"));
        assert_eq!(name_use("TEMP"), Some("temp"));
        assert_eq!(name_use("A"), None);
        assert_eq!(telecom_use("PRN"), Some("home"));
        assert_eq!(telecom_use("ORN"), None);
        assert_eq!(telecom_system("CP"), Some(("phone", Some("mobile"))));
        assert_eq!(telecom_system("Internet"), Some(("email", None)));
        assert_eq!(telecom_system("INTERNET"), Some(("email", None)));
        assert_eq!(telecom_system("X.400"), Some(("email", None)));
        assert_eq!(telecom_system("TDD"), Some(("other", None)));
        assert_eq!(telecom_system("TYD"), None);
    }

    #[test]
    fn misc() {
        assert_eq!(identifier_type_display("MR"), Some("Medical record number"));
        assert_eq!(identifier_type_display("ZZ"), None);
        assert_eq!(allergy_category("AA"), Some("biologic"));
        assert_eq!(allergy_category("MC"), None);
        assert_eq!(allergy_criticality("SV"), Some("high"));
        assert_eq!(allergy_criticality("MO"), None);
        assert_eq!(reaction_severity("MO"), Some("moderate"));
        assert_eq!(immunization_status("RE"), Some("not-done"));
        assert_eq!(immunization_status("PA"), Some("completed"));
        assert_eq!(address_use("BA"), Some("old"));
        assert_eq!(address_use("M"), None);
        assert_eq!(address_type("SH"), Some("postal"));
        assert_eq!(relationship("SPO"), Some((V3_ROLE_CODE, "SPS")));
        assert_eq!(relationship("SEL").map(|r| r.1), Some("ONESELF"));
        assert_eq!(relationship("EME"), None);
        assert_eq!(relationship("UNK"), None);
        assert_eq!(diagnosis_role("A"), Some("AD"));
        assert_eq!(diagnosis_role("F"), Some("DD"));
    }

    #[test]
    fn languages() {
        assert_eq!(language("eng"), Some("en"));
        assert_eq!(language("ARA"), Some("ar"));
        assert_eq!(language("fre"), Some("fr"));
        assert_eq!(language("fra"), Some("fr"));
        assert_eq!(language("deu"), Some("de"));
        assert_eq!(language("en"), Some("en"));
        assert_eq!(language("ES"), Some("es"));
        assert_eq!(language("hmn"), Some("hmn"));
        assert_eq!(language("xx"), None);
        assert_eq!(language("en-US"), None);
        assert_eq!(language(""), None);
    }

    proptest! {
        #[test]
        fn lookups_never_panic(code in "\\PC*") {
            let c = code.as_str();
            let _ = (gender(c), marital_status(c), encounter_class(c), encounter_status_from_class(c));
            let _ = (encounter_status_from_event(c), observation_status(c), interpretation(c));
            let _ = (report_status(c), name_use(c), telecom_use(c), telecom_system(c));
            let _ = (identifier_type_display(c), allergy_category(c), allergy_criticality(c));
            let _ = (reaction_severity(c), immunization_status(c), address_use(c), address_type(c));
            let _ = (relationship(c), diagnosis_role(c), language(c));
        }
    }

    #[test]
    fn race_and_ethnicity_go_to_their_us_core_slots() {
        let slot = |c: Option<Category>| c.map(|(slot, system, code, _)| (slot, system, code));
        assert_eq!(
            slot(race("2106-3", Some("HL70005"))),
            Some((CategorySlot::Omb, CDCREC, "2106-3".into()))
        );
        assert_eq!(
            slot(race(" 2131-1 ", Some("CDCREC"))),
            Some((CategorySlot::Detailed, CDCREC, "2131-1".into()))
        );
        assert_eq!(
            slot(race("UNK", Some("HL70005"))),
            Some((CategorySlot::Omb, V3_NULL_FLAVOR, "UNK".into()))
        );
        // a local code: text only; a CDCREC code under a misnamed table is
        // still CDCREC
        assert_eq!(race("W", None), None);
        assert_eq!(race("2054- 5", None), None);
        assert_eq!(
            slot(race("2106-3", Some("HL7000"))),
            Some((CategorySlot::Omb, CDCREC, "2106-3".into()))
        );
        assert_eq!(ethnicity("N", Some("LOCAL")), None);
        assert_eq!(
            slot(ethnicity("N", Some("HL70189"))),
            Some((CategorySlot::Omb, CDCREC, "2186-5".into()))
        );
        assert_eq!(
            slot(ethnicity("2148-5", None)),
            Some((CategorySlot::Detailed, CDCREC, "2148-5".into()))
        );
        assert_eq!(
            slot(ethnicity("U", None)),
            Some((CategorySlot::Omb, V3_NULL_FLAVOR, "UNK".into()))
        );
    }
}
