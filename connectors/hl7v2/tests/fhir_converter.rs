//! The built-in maps against Microsoft FHIR-Converter's expected outputs
//! (its functional-test bundles, in the shared corpus).
//!
//! FC ids are hashes and its systems are often placeholders
//! (`http://example.com/v2-to-fhir-converter/...`), so resources are matched
//! and compared by content: Patient by a shared identifier value, Encounter
//! by identifier value (or as the message's only one), Observation by code
//! and effective time; the second wave's types (ServiceRequest, Specimen,
//! Coverage, Appointment, DocumentReference, Procedure) in
//! `fhir_converter/second_wave.rs`. Every pair is compared; messages the maps
//! do not cover are listed as skipped. Datetimes are compared as instants:
//! FC's expected files re-express them in the generator's zone
//! (see /work/shared/HL7V2-TO-FHIR.md §2).
//!
//! A field counts only where both sides map it; "only FC" / "only ours" are
//! reported beside. Each field with at least [`MIN_COMPARISONS`] comparisons
//! must agree in [`MIN_RATE`] % of them.
//!
//! Where we follow the V2-to-FHIR IG and FC does not (the sheet, §3, §5,
//! §7), precise rules, one per documented difference, look at the message
//! itself and set aside only what that difference explains (see
//! [`Known`]): a whole comparison counts as "known" (not compared, not
//! agreed), or the FC-only part of a value is set aside and the rest is
//! compared. Everything set aside is listed with its reason, so a new
//! disagreement in the same field still counts against the rate. The second
//! wave's rules ([`second_wave::Rule`]) also cover where the IG leaves the
//! choice to us and MAPPING.md documents ours.
//!
//! The table goes to stdout (`--nocapture`) and to
//! `target/fhir-converter-agreement.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use fhirlift_connector_hl7v2::{MapOptions, MessageMap, map_message};
use fhirlift_hl7v2::fhir::tables;
use fhirlift_hl7v2::{Message, split};
use serde_json::Value;

#[path = "fhir_converter/second_wave.rs"]
mod second_wave;

/// The documented differences (IG ≠ FC, we follow the IG) a comparison
/// may be set aside for; the text is the reason shown in the report.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Known {
    /// FC merges GT1 (guarantor = self), IN1/IN2 and DB1 identifiers into
    /// Patient; the IG maps PID-2/3/4/19/20 only (§5 PID). Rule: FC values
    /// that occur nowhere in the message's first PID segment are set aside.
    NonPidIdentifier,
    /// FC merges the guarantor's (GT1 SEL) address into Patient. Rule: FC
    /// addresses whose first line or city occurs nowhere in the first PID
    /// segment are set aside.
    GuarantorAddress,
    /// The trigger-event status table (§5 PV1): IG and FC differ for A04,
    /// A14, A15, A16, A25, A26, A27. Rule: for those events a differing
    /// Encounter.status is set aside.
    EventStatus,
    /// Table 0085 (§7): the IG gives no target for I, O, S, R, U; ours is
    /// the sheet's documented choice, FC says `unknown`. Rule: set aside
    /// when FC says unknown and an OBX with that OBX-3.1 has an OBX-11 our
    /// choice maps to our status.
    ObservationStatusGap,
    /// FC puts any PID-10 / PID-22 code in `ombCategory` ("W", table 0189's
    /// "N"); US Core allows only CDCREC and UNK / ASKU there. Rule: FC codes
    /// that are not of the CDCREC form `NNNN-N` are set aside (ours keep
    /// them in the text, or map 0189's H / N / U).
    LocalCategoryCode,
    /// A second-wave type's documented difference ([`second_wave::Rule`]).
    Wave(second_wave::Rule),
}

impl Known {
    fn reason(self) -> &'static str {
        match self {
            Known::NonPidIdentifier => "FC adds GT1/IN1/IN2/DB1 identifiers; the IG maps PID only",
            Known::GuarantorAddress => "FC adds the guarantor's address",
            Known::EventStatus => "event status: IG ≠ FC",
            Known::ObservationStatusGap => "0085 gap: our documented choice",
            Known::LocalCategoryCode => "FC puts non-CDCREC race/ethnicity codes in ombCategory",
            Known::Wave(rule) => rule.reason(),
        }
    }
}

/// Events (MSH-9.2) whose Encounter.status the IG and FC set differently
/// (§5 PV1, event table).
const EVENT_STATUS_DIFFERS: &[&str] = &["A04", "A14", "A15", "A16", "A25", "A26", "A27"];

/// Table 0085 codes the IG leaves without a target, with our documented
/// choice (§7); FC maps them all to `unknown`.
const OBSERVATION_STATUS_CHOICES: &[(&str, &str)] = &[
    ("I", "registered"),
    ("O", "registered"),
    ("S", "registered"),
    ("R", "preliminary"),
    ("U", "final"),
];

/// Note for Patient.name comparisons that agree once FC's XPN.15 given is
/// dropped (§3 XPN: the IG makes it a HumanName of its own).
const CALLED_BY_NOTE: &str = "agreed once FC's XPN.15 (called-by) given is dropped: \
                              the IG maps it to a second HumanName with use=nickname, as ours does";

const MIN_COMPARISONS: usize = 3;
const MIN_RATE: f64 = 95.0;
/// The test must have compared something: a stub that maps nothing fails.
const MIN_MAPPED_MESSAGES: usize = 8;
const MIN_PATIENTS_COMPARED: usize = 8;

/// The fields of Patient, Encounter and Observation, in table order (the
/// second wave's follow: [`fields`]).
const FIELDS: &[&str] = &[
    "Patient.identifier",
    "Patient.identifier.system",
    "Patient.name",
    "Patient.birthDate",
    "Patient.gender",
    "Patient.address",
    "Patient.race",
    "Patient.race.text",
    "Patient.ethnicity",
    "Encounter.class",
    "Encounter.period.start",
    "Encounter.period.end",
    "Encounter.identifier",
    "Encounter.status",
    "Observation.code",
    "Observation.value",
    "Observation.unit",
    "Observation.status",
    "Observation.effective",
];

const PLACEHOLDER: &str = "http://example.com/";

/// Every field, in table order.
fn fields() -> impl Iterator<Item = &'static str> {
    FIELDS.iter().chain(second_wave::FIELDS).copied()
}

fn corpus() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = [
        std::env::var_os("FHIRLIFT_CORPUS").map(PathBuf::from),
        Some(workspace.join("../shared/corpus")),
        Some("/work/shared/corpus".into()),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("FHIR-Converter-PAIRS.tsv").is_file())
        .map(|p| p.canonicalize().unwrap_or(p))
        .expect("the shared corpus (../shared/corpus beside the workspace, or FHIRLIFT_CORPUS)")
}

/// `target/` (CARGO_TARGET_TMPDIR is `target/tmp`).
fn report_path() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .unwrap_or(tmp)
        .join("fhir-converter-agreement.md")
}

// ---------------------------------------------------------------- time

/// A FHIR date/dateTime, compared as an instant when it has a time and an
/// offset, else as its text (`2023-06-15`).
#[derive(Clone)]
struct When {
    key: WhenKey,
    text: String,
}

#[derive(Clone, PartialEq, Eq)]
enum WhenKey {
    /// Seconds since 1970-01-01T00:00:00Z, nanoseconds.
    Instant(i64, u32),
    Text(String),
}

impl When {
    fn parse(text: &str) -> When {
        let text = text.trim();
        let key = match parse_instant(text) {
            Some((s, n)) => WhenKey::Instant(s, n),
            None => WhenKey::Text(text.to_owned()),
        };
        When {
            key,
            text: text.to_owned(),
        }
    }
}

impl PartialEq for When {
    fn eq(&self, other: &When) -> bool {
        self.key == other.key
    }
}

impl std::fmt::Debug for When {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

/// `YYYY-MM-DDThh:mm[:ss[.fff…]](Z|±hh:mm)` → (seconds since the epoch,
/// nanoseconds). Anything else (a date, no offset) is `None`.
fn parse_instant(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    if b.len() < 17 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    let num = |from: usize, len: usize| -> Option<i64> {
        let t = s.get(from..from + len)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())
            .flatten()
    };
    let (y, mo, d, h, mi) = (num(0, 4)?, num(5, 2)?, num(8, 2)?, num(11, 2)?, num(14, 2)?);
    let mut at = 16;
    let (mut sec, mut nanos) = (0, 0u32);
    if b.get(at) == Some(&b':') {
        sec = num(at + 1, 2)?;
        at += 3;
        if b.get(at) == Some(&b'.') {
            let digits: String = s[at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            if digits.is_empty() {
                return None;
            }
            at += 1 + digits.len();
            let mut frac: String = digits.chars().take(9).collect();
            while frac.len() < 9 {
                frac.push('0');
            }
            nanos = frac.parse().ok()?;
        }
    }
    let offset = match &s[at..] {
        "Z" => 0,
        rest if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            sign * (num(at + 1, 2)? * 3600 + num(at + 4, 2)? * 60)
        }
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 24 || mi > 59 || sec > 60 {
        return None;
    }
    Some((
        days_from_civil(y, mo, d)? * 86_400 + h * 3600 + mi * 60 + sec - offset,
        nanos,
    ))
}

/// Days since 1970-01-01 of a date (`None` when there is no such date).
fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    let date = jiff::civil::Date::new(
        i16::try_from(y).ok()?,
        i8::try_from(m).ok()?,
        i8::try_from(d).ok()?,
    )
    .ok()?;
    Some(date.duration_since(jiff::civil::date(1970, 1, 1)).as_secs() / 86_400)
}

// ---------------------------------------------------------------- JSON

fn get<'v>(v: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn text(v: Option<&Value>) -> Option<String> {
    let s = v?.as_str()?.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

fn array<'v>(v: &'v Value, key: &str) -> &'v [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn placeholder(system: &str) -> bool {
    system.starts_with(PLACEHOLDER)
}

/// Identifier values, trimmed, blanks dropped, first occurrence kept.
fn identifier_values(r: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in array(r, "identifier")
        .iter()
        .filter_map(|i| text(i.get("value")))
    {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

fn shares_identifier(a: &Value, b: &Value) -> bool {
    let a = identifier_values(a);
    identifier_values(b).iter().any(|v| a.contains(v))
}

/// The first name: family and given names.
fn first_name(r: &Value) -> Option<(String, Vec<String>)> {
    let n = array(r, "name").first()?;
    let family = text(n.get("family")).unwrap_or_default();
    let given: Vec<String> = array(n, "given")
        .iter()
        .filter_map(|g| text(Some(g)))
        .collect();
    (!family.is_empty() || !given.is_empty()).then_some((family, given))
}

/// line, city, state, postalCode, country
type Address = (Vec<String>, String, String, String, String);

/// Addresses, sorted; those with none of the compared parts (FC's
/// district-only address from PID-12) dropped.
fn addresses(r: &Value) -> Option<Vec<Address>> {
    let mut out: Vec<Address> = array(r, "address")
        .iter()
        .map(|a| {
            let part = |k: &str| text(a.get(k)).unwrap_or_default();
            let lines: Vec<String> = array(a, "line")
                .iter()
                .filter_map(|l| text(Some(l)))
                .collect();
            (
                lines,
                part("city"),
                part("state"),
                part("postalCode"),
                part("country"),
            )
        })
        .filter(|(l, c, s, p, n)| {
            !(l.is_empty() && c.is_empty() && s.is_empty() && p.is_empty() && n.is_empty())
        })
        .collect();
    out.sort();
    non_empty(out)
}

/// The first coding's code and system.
fn first_coding(cc: Option<&Value>) -> Option<(String, Option<String>)> {
    let c = array(cc?, "coding").first()?;
    Some((text(c.get("code"))?, text(c.get("system"))))
}

fn effective(r: &Value) -> Option<When> {
    text(r.get("effectiveDateTime"))
        .or_else(|| text(r.get("effectiveInstant")))
        .or_else(|| text(get(r, &["effectivePeriod", "start"])))
        .map(|t| When::parse(&t))
}

/// An Observation's value[x], normalised for comparison.
#[derive(Debug, Clone)]
enum Val {
    Quantity(f64),
    String(String),
    /// valueCodeableConcept: the first code (else the text).
    Code(String),
    DateTime(When),
    /// Any other type: its name and content.
    Other(String, Value),
}

fn value(r: &Value) -> Option<Val> {
    let (key, v) = r
        .as_object()?
        .iter()
        .find(|(k, _)| k.starts_with("value"))?;
    Some(match key.as_str() {
        "valueQuantity" => match v.get("value").and_then(|n| {
            n.as_f64()
                .or_else(|| n.as_str().and_then(|s| s.trim().parse().ok()))
        }) {
            Some(n) => Val::Quantity(n),
            None => Val::Other("Quantity".into(), v.clone()),
        },
        "valueString" => Val::String(v.as_str().unwrap_or_default().trim().to_owned()),
        "valueCodeableConcept" => Val::Code(
            first_coding(Some(v))
                .map(|(c, _)| c)
                .or_else(|| text(v.get("text")))
                .unwrap_or_default(),
        ),
        "valueDateTime" => Val::DateTime(When::parse(v.as_str().unwrap_or_default())),
        other => Val::Other(other["value".len()..].to_owned(), v.clone()),
    })
}

fn same_value(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::Quantity(x), Val::Quantity(y)) => {
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        (Val::String(x), Val::String(y)) | (Val::Code(x), Val::Code(y)) => x == y,
        (Val::DateTime(x), Val::DateTime(y)) => x == y,
        (Val::Other(t, x), Val::Other(u, y)) => t == u && x == y,
        _ => false,
    }
}

// ---------------------------------------------------------------- the message

/// What the rules read from the message itself (every message of the file).
#[derive(Default)]
struct Source {
    /// The first PID segment: as written, and with escapes decoded.
    pid: Option<(String, String)>,
    /// MSH-9.2 of each message, upper case.
    events: Vec<String>,
    /// (OBX-3.1, OBX-11) of each OBX.
    obx: Vec<(String, String)>,
    /// What the second wave's rules read.
    wave: second_wave::Facts,
}

impl Source {
    fn add(&mut self, m: &Message<'_>) {
        if self.pid.is_none() {
            self.pid = m
                .segment("PID")
                .map(|pid| (pid.text().to_owned(), m.value(pid.text())));
        }
        if let Some((_, event)) = m.message_type() {
            self.events.push(event.trim().to_ascii_uppercase());
        }
        for s in m.segments().filter(|s| s.name() == "OBX") {
            let code = s.component(3, 0, 1).map(|c| m.value(c)).unwrap_or_default();
            let status = s.field(11).map(|f| m.value(f)).unwrap_or_default();
            self.obx
                .push((code.trim().to_owned(), status.trim().to_owned()));
        }
        self.wave.add(m);
    }

    /// Whether `v` occurs in the first PID segment (as written or decoded).
    fn in_pid(&self, v: &str) -> bool {
        !v.is_empty()
            && self
                .pid
                .as_ref()
                .is_some_and(|(raw, decoded)| raw.contains(v) || decoded.contains(v))
    }

    /// Whether the event table sets Encounter.status differently in the
    /// IG and FC for (one of) the file's messages.
    fn event_status_differs(&self) -> bool {
        self.events
            .iter()
            .any(|e| EVENT_STATUS_DIFFERS.contains(&e.as_str()))
    }

    /// Whether an OBX coded `code` has an OBX-11 without an IG target that
    /// our documented choice maps to `ours`.
    fn status_gap(&self, code: &str, ours: &str) -> bool {
        self.obx.iter().any(|(c, s)| {
            c == code
                && OBSERVATION_STATUS_CHOICES
                    .iter()
                    .any(|&(v2, fhir)| v2 == s && fhir == ours)
        })
    }
}

// ---------------------------------------------------------------- tally

#[derive(Default)]
struct Stat {
    /// Comparisons counted (known ones excluded).
    compared: usize,
    agreed: usize,
    /// Comparisons set aside whole as a documented difference.
    known: usize,
    only_fc: usize,
    only_ours: usize,
    disagreements: Vec<String>,
    /// Note (known reasons, rules that made an agreement) → how many
    /// comparisons it concerns.
    notes: BTreeMap<String, usize>,
}

impl Stat {
    fn rate(&self) -> Option<f64> {
        (self.compared > 0).then(|| 100.0 * self.agreed as f64 / self.compared as f64)
    }

    fn note(&mut self, note: String) {
        *self.notes.entry(note).or_default() += 1;
    }
}

/// How one comparison came out.
enum Verdict {
    Agree,
    /// Agreed once a documented rule moved FC's value to the IG's place:
    /// counted as agreed, with this note.
    AgreeNoted(&'static str),
    /// The values differ: the detail.
    Differ(String),
    /// Set aside whole: the documented difference that explains it, and
    /// the detail.
    Known(Known, String),
}

#[derive(Default)]
struct Matched {
    fc: usize,
    ours: usize,
    matched: usize,
}

#[derive(Default)]
struct Tally {
    fields: BTreeMap<&'static str, Stat>,
    resources: BTreeMap<&'static str, Matched>,
    /// Resources of one side with no counterpart (compared types only).
    unmatched: Vec<String>,
    /// Everything set aside as a documented difference, whole comparisons
    /// and FC-only parts alike.
    known: Vec<String>,
}

/// Ways to tell FC's counterpart of one of ours, tried in turn.
type Passes<'p> = &'p [&'p dyn Fn(&Value, &Value) -> bool];

/// Where a comparison happens: file and resource.
struct At<'a> {
    file: &'a str,
    resource: String,
}

impl Tally {
    /// Counts one field of one matched pair, as `judge` finds it when both
    /// sides have a value.
    fn compare<T: std::fmt::Debug>(
        &mut self,
        at: &At<'_>,
        field: &'static str,
        ours: Option<T>,
        fc: Option<T>,
        judge: impl Fn(&T, &T) -> Verdict,
    ) {
        match (ours, fc) {
            (Some(o), Some(f)) => match judge(&o, &f) {
                Verdict::Agree => {
                    let stat = self.fields.entry(field).or_default();
                    stat.compared += 1;
                    stat.agreed += 1;
                }
                Verdict::AgreeNoted(note) => {
                    let stat = self.fields.entry(field).or_default();
                    stat.compared += 1;
                    stat.agreed += 1;
                    stat.note(note.to_owned());
                }
                Verdict::Differ(detail) => {
                    let stat = self.fields.entry(field).or_default();
                    stat.compared += 1;
                    stat.disagreements
                        .push(format!("{} {} {field}: {detail}", at.file, at.resource));
                }
                Verdict::Known(why, detail) => self.known_whole(at, field, why, detail),
            },
            (Some(_), None) => self.fields.entry(field).or_default().only_ours += 1,
            (None, Some(_)) => self.fields.entry(field).or_default().only_fc += 1,
            (None, None) => {
                self.fields.entry(field).or_default();
            }
        }
    }

    /// A comparison set aside whole.
    fn known_whole(&mut self, at: &At<'_>, field: &'static str, why: Known, detail: String) {
        let stat = self.fields.entry(field).or_default();
        stat.known += 1;
        stat.note(format!("known: {}", why.reason()));
        self.known.push(format!(
            "{} {} {field} (set aside): {detail} — {}",
            at.file,
            at.resource,
            why.reason()
        ));
    }

    /// FC-only parts of a value set aside; the rest is compared.
    fn known_part(&mut self, at: &At<'_>, field: &'static str, why: Known, detail: String) {
        self.fields
            .entry(field)
            .or_default()
            .note(format!("partly set aside: {}", why.reason()));
        self.known.push(format!(
            "{} {} {field} (FC part set aside, rest compared): {detail} — {}",
            at.file,
            at.resource,
            why.reason()
        ));
    }

    /// The first codings of two CodeableConcepts ([`same_code`]).
    fn codes(
        &mut self,
        at: &At<'_>,
        field: &'static str,
        ours: Option<&Value>,
        fc: Option<&Value>,
    ) {
        self.compare(at, field, first_coding(ours), first_coding(fc), same_code);
    }

    fn equal<T: std::fmt::Debug + PartialEq>(
        &mut self,
        at: &At<'_>,
        field: &'static str,
        ours: Option<T>,
        fc: Option<T>,
    ) {
        self.compare(at, field, ours, fc, |o, f| same(o, f));
    }

    /// Every FC identifier value appears in ours.
    fn identifiers(&mut self, at: &At<'_>, field: &'static str, ours: &Value, fc: &Value) {
        self.compare(
            at,
            field,
            non_empty(identifier_values(ours)),
            non_empty(identifier_values(fc)),
            all_in,
        );
    }

    /// Every FC identifier value must be ours, but for those `explained`
    /// says the documented difference `why` explains: they are set aside
    /// (Patient.identifier: FC values found nowhere in the first PID,
    /// [`Known::NonPidIdentifier`]).
    fn identifiers_but(
        &mut self,
        at: &At<'_>,
        field: &'static str,
        why: Known,
        (ours, fc): (&Value, &Value),
        explained: impl Fn(&str) -> bool,
    ) {
        let o = identifier_values(ours);
        let f = identifier_values(fc);
        let (aside, kept): (Vec<String>, Vec<String>) =
            f.iter().cloned().partition(|v| explained(v));
        if o.is_empty() || aside.is_empty() {
            return self.compare(at, field, non_empty(o), non_empty(f), all_in);
        }
        let detail = format!("ours {o:?} vs FC {aside:?}");
        if kept.is_empty() {
            return self.known_whole(at, field, why, detail);
        }
        self.known_part(at, field, why, detail);
        self.compare(at, field, Some(o), Some(kept), all_in);
    }

    /// Patient.address: FC addresses whose first line or city is found
    /// nowhere in the first PID are set aside
    /// ([`Known::GuarantorAddress`]); ours must equal the rest. An address
    /// with neither a line nor a city is always compared.
    fn patient_addresses(&mut self, at: &At<'_>, ours: &Value, fc: &Value, src: &Source) {
        const FIELD: &str = "Patient.address";
        let o = addresses(ours);
        let f = addresses(fc);
        let (Some(o), Some(f)) = (o.clone(), f.clone()) else {
            return self.equal(at, FIELD, o, f);
        };
        let (kept, aside): (Vec<Address>, Vec<Address>) =
            f.iter().cloned().partition(|(lines, city, ..)| {
                let line = lines.first().map_or("", String::as_str);
                (line.is_empty() && city.is_empty()) || src.in_pid(line) || src.in_pid(city)
            });
        if aside.is_empty() {
            return self.equal(at, FIELD, Some(o), Some(f));
        }
        let detail = format!("ours {o:?} vs FC {aside:?}");
        if kept.is_empty() {
            return self.known_whole(at, FIELD, Known::GuarantorAddress, detail);
        }
        self.known_part(at, FIELD, Known::GuarantorAddress, detail);
        self.equal(at, FIELD, Some(o), Some(kept));
    }

    /// Pairs the file's FC resources of `kind` with ours, pass by pass:
    /// each FC resource with the first of ours still unpaired that the pass
    /// says is its counterpart; then, with `lone`, the single leftover of
    /// each side. Counts the pairs and lists the rest.
    fn matched<'v>(
        &mut self,
        (file, kind): (&str, &'static str),
        (ours, fc): (&'v [Value], &'v [Value]),
        passes: Passes<'_>,
        lone: bool,
    ) -> Vec<(&'v Value, &'v Value)> {
        let mut o: Vec<Option<&Value>> = of_type(ours, kind).into_iter().map(Some).collect();
        let mut f: Vec<Option<&Value>> = of_type(fc, kind).into_iter().map(Some).collect();
        let (n_o, n_f) = (o.len(), f.len());
        let mut pairs = Vec::new();
        for pass in passes {
            for slot in f.iter_mut() {
                let Some(fr) = *slot else { continue };
                if let Some(i) = o.iter().position(|or| or.is_some_and(|or| pass(or, fr))) {
                    pairs.push((o[i].take().unwrap(), fr));
                    *slot = None;
                }
            }
        }
        let mut fc_left: Vec<&Value> = f.into_iter().flatten().collect();
        let mut ours_left: Vec<&Value> = o.into_iter().flatten().collect();
        if lone && fc_left.len() == 1 && ours_left.len() == 1 {
            pairs.push((ours_left.remove(0), fc_left.remove(0)));
        }
        let m = self.resources.entry(kind).or_default();
        (m.fc, m.ours, m.matched) = (m.fc + n_f, m.ours + n_o, m.matched + pairs.len());
        for (side, left) in [("FC", fc_left), ("ours", ours_left)] {
            for r in left {
                let what = if kind == "Observation" {
                    format!("effective {}", label(effective(r).map(|w| w.text).as_ref()))
                } else {
                    format!("identifiers {:?}", identifier_values(r))
                };
                let code = first_coding(r.get("code").or_else(|| r.get("type"))).map(|c| c.0);
                let code = label(code.as_ref());
                self.unmatched.push(format!(
                    "{file}: {kind} only in {side}: code {code}, {what}"
                ));
            }
        }
        pairs
    }
}

fn same<T: std::fmt::Debug + PartialEq>(o: &T, f: &T) -> Verdict {
    if o == f {
        Verdict::Agree
    } else {
        Verdict::Differ(format!("ours {o:?} vs FC {f:?}"))
    }
}

/// `v`, but a difference the documented difference `why` explains is set
/// aside.
fn unless(v: Verdict, explained: bool, why: Known) -> Verdict {
    match v {
        Verdict::Differ(detail) if explained => Verdict::Known(why, detail),
        v => v,
    }
}

/// The same code, and FC's system unless it is a placeholder.
fn same_code((oc, os): &(String, Option<String>), (fc, fs): &(String, Option<String>)) -> Verdict {
    let system_ok = match fs {
        Some(fs) if !placeholder(fs) => os.as_ref() == Some(fs),
        _ => true,
    };
    if oc == fc && system_ok {
        Verdict::Agree
    } else {
        Verdict::Differ(format!("ours {oc:?} ({os:?}) vs FC {fc:?} ({fs:?})"))
    }
}

/// Every FC value is among ours.
#[allow(clippy::ptr_arg)] // a judge for `Tally::compare` with T = Vec<String>
fn all_in(o: &Vec<String>, f: &Vec<String>) -> Verdict {
    let missing: Vec<&String> = f.iter().filter(|v| !o.contains(v)).collect();
    if missing.is_empty() {
        Verdict::Agree
    } else {
        Verdict::Differ(format!("FC values {missing:?} missing from ours {o:?}"))
    }
}

/// A value for messages: quoted, or `-`.
fn label(v: Option<&String>) -> String {
    v.map_or("-".into(), |v| format!("{v:?}"))
}

fn of_type<'v>(resources: &'v [Value], kind: &str) -> Vec<&'v Value> {
    resources
        .iter()
        .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some(kind))
        .collect()
}

fn compare_patients(t: &mut Tally, file: &str, src: &Source, ours: &[Value], fc: &[Value]) {
    let passes: Passes<'_> = &[&shares_identifier];
    for (o, f) in t.matched((file, "Patient"), (ours, fc), passes, true) {
        let at = At {
            file,
            resource: format!("Patient {}", label(identifier_values(f).first())),
        };
        let why = Known::NonPidIdentifier;
        t.identifiers_but(&at, "Patient.identifier", why, (o, f), |v| !src.in_pid(v));
        // systems: only where FC's is not a placeholder, per FC identifier
        // whose value we have too
        for fi in array(f, "identifier") {
            let Some(v) = text(fi.get("value")) else {
                continue;
            };
            let fc_system = text(fi.get("system"));
            if fc_system.as_deref().is_some_and(placeholder) {
                continue;
            }
            let same: Vec<&Value> = array(o, "identifier")
                .iter()
                .filter(|oi| text(oi.get("value")).as_deref() == Some(v.as_str()))
                .collect();
            if same.is_empty() {
                continue;
            }
            let ours_systems: Vec<String> = same
                .iter()
                .filter_map(|oi| text(oi.get("system")))
                .collect();
            let at = At {
                file,
                resource: format!("{} identifier {v:?}", at.resource),
            };
            t.compare(
                &at,
                "Patient.identifier.system",
                non_empty(ours_systems),
                fc_system.map(|s| vec![s]),
                |o, f| {
                    if f.iter().all(|s| o.contains(s)) {
                        Verdict::Agree
                    } else {
                        Verdict::Differ(format!("ours {o:?} vs FC {f:?}"))
                    }
                },
            );
        }
        // XPN.15: the IG's nickname HumanName (ours) is a given in FC's
        // first name
        let nicknames: Vec<String> = array(o, "name")
            .iter()
            .filter(|n| text(n.get("use")).as_deref() == Some("nickname"))
            .flat_map(|n| array(n, "given").iter().filter_map(|g| text(Some(g))))
            .collect();
        t.compare(&at, "Patient.name", first_name(o), first_name(f), |o, f| {
            if o == f {
                return Verdict::Agree;
            }
            let (family, given) = f;
            let without: Vec<String> = given
                .iter()
                .filter(|g| !nicknames.contains(g))
                .cloned()
                .collect();
            if without.len() < given.len() && *o == (family.clone(), without) {
                Verdict::AgreeNoted(CALLED_BY_NOTE)
            } else {
                Verdict::Differ(format!("ours {o:?} vs FC {f:?}"))
            }
        });
        t.equal(
            &at,
            "Patient.birthDate",
            text(o.get("birthDate")),
            text(f.get("birthDate")),
        );
        t.equal(
            &at,
            "Patient.gender",
            text(o.get("gender")),
            text(f.get("gender")),
        );
        t.patient_addresses(&at, o, f, src);
        for (field, url) in [
            ("Patient.race", US_CORE_RACE),
            ("Patient.ethnicity", US_CORE_ETHNICITY),
        ] {
            let fc_codes = category_codes(f, url);
            let (cdc, local): (Vec<String>, Vec<String>) =
                fc_codes.into_iter().partition(|c| tables::cdc_code(c));
            if !local.is_empty() {
                t.known_part(
                    &at,
                    field,
                    Known::LocalCategoryCode,
                    format!("FC {local:?}"),
                );
            }
            t.equal(
                &at,
                field,
                non_empty(category_codes(o, url)),
                non_empty(cdc),
            );
        }
        t.equal(
            &at,
            "Patient.race.text",
            category_text(o, US_CORE_RACE),
            category_text(f, US_CORE_RACE),
        );
    }
}

const US_CORE_RACE: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race";
const US_CORE_ETHNICITY: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity";

/// The US Core extension `url` of a Patient.
fn category<'v>(r: &'v Value, url: &str) -> Option<&'v Value> {
    array(r, "extension")
        .iter()
        .find(|e| text(e.get("url")).as_deref() == Some(url))
}

/// The codes of its `ombCategory` and `detailed` parts, sorted.
fn category_codes(r: &Value, url: &str) -> Vec<String> {
    let mut codes: Vec<String> = category(r, url)
        .map(|e| array(e, "extension"))
        .unwrap_or_default()
        .iter()
        .filter(|p| {
            matches!(
                text(p.get("url")).as_deref(),
                Some("ombCategory" | "detailed")
            )
        })
        .filter_map(|p| text(get(p, &["valueCoding", "code"])))
        .collect();
    codes.sort();
    codes.dedup();
    codes
}

/// Its `text` part.
fn category_text(r: &Value, url: &str) -> Option<String> {
    array(category(r, url)?, "extension")
        .iter()
        .find(|p| text(p.get("url")).as_deref() == Some("text"))
        .and_then(|p| text(p.get("valueString")))
}

fn compare_encounters(t: &mut Tally, file: &str, src: &Source, ours: &[Value], fc: &[Value]) {
    let passes: Passes<'_> = &[&shares_identifier];
    for (o, f) in t.matched((file, "Encounter"), (ours, fc), passes, true) {
        let at = At {
            file,
            resource: format!("Encounter {}", label(identifier_values(f).first())),
        };
        t.equal(
            &at,
            "Encounter.class",
            text(get(o, &["class", "code"])),
            text(get(f, &["class", "code"])),
        );
        for (field, end) in [
            ("Encounter.period.start", "start"),
            ("Encounter.period.end", "end"),
        ] {
            let when = |r: &Value| text(get(r, &["period", end])).map(|s| When::parse(&s));
            t.equal(&at, field, when(o), when(f));
        }
        t.identifiers(&at, "Encounter.identifier", o, f);
        t.compare(
            &at,
            "Encounter.status",
            text(o.get("status")),
            text(f.get("status")),
            |o, f| unless(same(o, f), src.event_status_differs(), Known::EventStatus),
        );
    }
}

fn compare_observations(t: &mut Tally, file: &str, src: &Source, ours: &[Value], fc: &[Value]) {
    let code = |r: &Value| first_coding(r.get("code")).map(|c| c.0);
    let timed = |o: &Value, f: &Value| code(o) == code(f) && effective(o) == effective(f);
    let valued = |o: &Value, f: &Value| {
        timed(o, f)
            && match (value(o), value(f)) {
                (Some(a), Some(b)) => same_value(&a, &b),
                (a, b) => a.is_none() && b.is_none(),
            }
    };
    // code + time + value; code + time; code alone (so that a time that
    // differs shows as a disagreement, not as two strays)
    let passes: Passes<'_> = &[&valued, &timed, &|o, f| code(o) == code(f)];
    for (o, f) in t.matched((file, "Observation"), (ours, fc), passes, false) {
        let at = At {
            file,
            resource: format!(
                "Observation {} at {}",
                label(code(f).as_ref()),
                label(effective(f).map(|w| w.text).as_ref())
            ),
        };
        t.codes(&at, "Observation.code", o.get("code"), f.get("code"));
        t.compare(&at, "Observation.value", value(o), value(f), |a, b| {
            if same_value(a, b) {
                Verdict::Agree
            } else {
                Verdict::Differ(format!("ours {a:?} vs FC {b:?}"))
            }
        });
        t.equal(
            &at,
            "Observation.unit",
            text(get(o, &["valueQuantity", "unit"])),
            text(get(f, &["valueQuantity", "unit"])),
        );
        let fc_code = code(f).unwrap_or_default();
        t.compare(
            &at,
            "Observation.status",
            text(o.get("status")),
            text(f.get("status")),
            |o, f| {
                let explained = f == "unknown" && src.status_gap(&fc_code, o);
                unless(same(o, f), explained, Known::ObservationStatusGap)
            },
        );
        t.equal(&at, "Observation.effective", effective(o), effective(f));
    }
}

// ---------------------------------------------------------------- the test

#[derive(Default)]
struct Run {
    pairs: usize,
    messages: usize,
    mapped: usize,
    unmapped: Vec<String>,
    failed: Vec<String>,
    unreadable: Vec<String>,
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn report(corpus: &Path, run: &Run, t: &Tally) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(
        w,
        "# HL7 v2 → FHIR: agreement with Microsoft FHIR-Converter\n\n\
         Corpus `{}`: {} pairs, {} messages: \
         {} mapped, {} unmapped (skipped), {} map failures, {} unreadable.\n\n\
         A field is compared only where both sides map it; ids and references are never compared; \
         datetimes are compared as instants. Pass: ≥ {MIN_RATE} % agreement for fields with ≥ \
         {MIN_COMPARISONS} comparisons.\n\n\
         \"known\": comparisons set aside whole because a documented difference (IG ≠ FC, we \
         follow the IG; /work/shared/HL7V2-TO-FHIR.md) explains them; they count neither as \
         compared nor as agreed. Where a rule sets aside only FC's extra part of a value \
         (\"partly set aside\"), the rest is compared as usual. Everything set aside is listed \
         under \"Known differences\".\n",
        corpus.display(),
        run.pairs,
        run.messages,
        run.mapped,
        run.unmapped.len(),
        run.failed.len(),
        run.unreadable.len(),
    );
    let _ = writeln!(
        w,
        "| field | compared | agreed | rate % | known | only FC | only ours | note |\n\
         |---|---:|---:|---:|---:|---:|---:|---|"
    );
    for field in fields() {
        let empty = Stat::default();
        let s = t.fields.get(field).unwrap_or(&empty);
        let rate = s.rate().map_or("–".into(), |r| format!("{r:.1}"));
        let note: Vec<String> = s
            .notes
            .iter()
            .map(|(note, n)| format!("{note} ({n}×)"))
            .collect();
        let _ = writeln!(
            w,
            "| {field} | {} | {} | {rate} | {} | {} | {} | {} |",
            s.compared,
            s.agreed,
            s.known,
            s.only_fc,
            s.only_ours,
            note.join("; ")
        );
    }
    let _ = writeln!(
        w,
        "\n| resource | FC | ours | matched |\n|---|---:|---:|---:|"
    );
    for (kind, m) in &t.resources {
        let _ = writeln!(w, "| {kind} | {} | {} | {} |", m.fc, m.ours, m.matched);
    }
    let lists = [
        ("Unmapped messages (skipped)", &run.unmapped),
        ("Map failures", &run.failed),
        ("Unreadable messages", &run.unreadable),
        ("Unmatched resources", &t.unmatched),
        ("Known differences", &t.known),
    ];
    for (title, list) in lists {
        if !list.is_empty() {
            let _ = writeln!(w, "\n## {title}\n");
            for line in list {
                let _ = writeln!(w, "- {line}");
            }
        }
    }
    let disagreements: Vec<&String> = fields()
        .filter_map(|f| t.fields.get(f))
        .flat_map(|s| &s.disagreements)
        .collect();
    if !disagreements.is_empty() {
        let _ = writeln!(w, "\n## Disagreements\n");
        for d in disagreements {
            let _ = writeln!(w, "- {d}");
        }
    }
    md
}

#[test]
fn agreement_with_fhir_converter_on_its_samples() {
    let corpus = corpus();
    let pairs = std::fs::read_to_string(corpus.join("FHIR-Converter-PAIRS.tsv")).unwrap();
    let options = MapOptions::default();
    let mut run = Run::default();
    let mut t = Tally::default();
    for line in pairs.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').map(str::trim).collect();
        let [root, message_file, expected_file] = cols[..] else {
            panic!("FHIR-Converter-PAIRS.tsv: not 3 columns: {line:?}");
        };
        run.pairs += 1;
        let file = message_file.rsplit('/').next().unwrap_or(message_file);
        let bytes = std::fs::read(corpus.join(message_file))
            .unwrap_or_else(|e| panic!("{message_file}: {e}"));
        let mut ours: Vec<Value> = Vec::new();
        let mut mapped_any = false;
        let mut source = Source::default();
        for raw in split(&bytes) {
            run.messages += 1;
            let message = match Message::parse(raw.bytes, raw.offset) {
                Ok(m) => m,
                Err(e) => {
                    run.unreadable.push(format!("{file}@{}: {e}", raw.offset));
                    continue;
                }
            };
            source.add(&message);
            match map_message(&message, &options) {
                Ok(MessageMap::Mapped(resources)) => {
                    run.mapped += 1;
                    mapped_any = true;
                    ours.extend(resources.into_iter().map(|r| r.resource));
                }
                Ok(MessageMap::Unmapped { message_type }) => run
                    .unmapped
                    .push(format!("{file} ({root}): {message_type}")),
                Err(e) => run.failed.push(format!("{file} ({root}): {e}")),
            }
        }
        if !mapped_any {
            continue;
        }
        let expected = read_json(&corpus.join(expected_file));
        let theirs: Vec<Value> = array(&expected, "entry")
            .iter()
            .filter_map(|e| e.get("resource").cloned())
            .collect();
        compare_patients(&mut t, file, &source, &ours, &theirs);
        compare_encounters(&mut t, file, &source, &ours, &theirs);
        compare_observations(&mut t, file, &source, &ours, &theirs);
        second_wave::compare(&mut t, file, &source, &ours, &theirs);
    }

    let md = report(&corpus, &run, &t);
    println!("{md}");
    let out = report_path();
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&out, &md) {
        Ok(()) => println!("(written to {})", out.display()),
        Err(e) => println!("(cannot write {}: {e})", out.display()),
    }

    let patients = t.fields.get("Patient.identifier").map_or(0, |s| s.compared);
    assert!(
        run.mapped >= MIN_MAPPED_MESSAGES && patients >= MIN_PATIENTS_COMPARED,
        "too little was compared to judge the maps: {} of {} messages mapped (need ≥ {MIN_MAPPED_MESSAGES}), \
         {patients} Patients compared (need ≥ {MIN_PATIENTS_COMPARED}). Does map_message still return \
         Unmapped for everything?\nunmapped: {:#?}\nmap failures: {:#?}\nunmatched: {:#?}",
        run.mapped,
        run.messages,
        run.unmapped,
        run.failed,
        t.unmatched,
    );

    let mut failing = String::new();
    for field in fields() {
        let Some(s) = t.fields.get(field) else {
            continue;
        };
        let Some(rate) = s.rate() else { continue };
        if s.compared < MIN_COMPARISONS || rate >= MIN_RATE {
            continue;
        }
        let _ = writeln!(
            failing,
            "\n{field}: {} of {} agree ({rate:.1} % < {MIN_RATE} %):",
            s.agreed, s.compared
        );
        for d in &s.disagreements {
            let _ = writeln!(failing, "  - {d}");
        }
    }
    assert!(
        failing.is_empty(),
        "fields below {MIN_RATE} % agreement with FHIR-Converter (fix the map; a difference the \
         sheet documents, where we follow the IG, needs a precise rule (`Known`) here, never a \
         field exemption; full report in {}):{failing}",
        out.display()
    );
}

#[test]
fn rules_set_aside_only_what_they_explain() {
    let text = "MSH|^~\\&|A|B|C|D|20230101||ADT^A04^ADT_A01|1|P|2.5\r\
                PID|1||MRN1^^^H^MR||DOE^JO||||||1 Main St^^Springfield\\T\\Co^IL\r\
                GT1|1|G-1||||9 Elm Rd^^Madison\r\
                OBX|1|NM|X1^x^LN||1||||||I\r\
                OBX|2|NM|X2^x^LN||1||||||F\r";
    let m = Message::parse(text.as_bytes(), 0).unwrap();
    let mut src = Source::default();
    src.add(&m);
    assert!(src.in_pid("MRN1") && src.in_pid("1 Main St"));
    // decoded escapes count too
    assert!(src.in_pid("Springfield&Co"));
    assert!(!src.in_pid("G-1") && !src.in_pid("Madison") && !src.in_pid(""));
    assert!(src.event_status_differs());
    // I → registered only, and only for the OBX coded so
    assert!(src.status_gap("X1", "registered"));
    assert!(!src.status_gap("X1", "final"));
    assert!(!src.status_gap("X2", "final"));
    assert!(!src.status_gap("X3", "registered"));
}

#[test]
fn datetimes_compare_as_instants() {
    // MSH-7 198908181126+0215 as FC's expected file stores it
    let a = When::parse("1989-08-18T14:41:00+05:30");
    assert_eq!(a, When::parse("1989-08-18T11:26:00+02:15"));
    assert_eq!(a, When::parse("1989-08-18T09:11:00Z"));
    assert_eq!(a, When::parse("1989-08-18T09:11:00.000Z"));
    assert_ne!(a, When::parse("1989-08-18T09:11:00.1Z"));
    assert_ne!(a, When::parse("1989-08-18T09:11:00+00:01"));
    assert_eq!(
        When::parse("2000-03-01T00:00:00+00:00"),
        When::parse("2000-02-29T23:00:00-01:00")
    );
    assert_eq!(parse_instant("1970-01-01T00:00:00Z"), Some((0, 0)));
    assert_eq!(
        parse_instant("2023-06-15T09:30:00.1234Z"),
        Some((1_686_821_400, 123_400_000))
    );
    // dates and offset-less times compare as text
    assert_eq!(When::parse("2023-06-15"), When::parse("2023-06-15"));
    assert_ne!(When::parse("2023-06"), When::parse("2023-06-15"));
    assert_eq!(parse_instant("2023-06-15T09:30:00"), None);
    assert_eq!(parse_instant("2023-13-15T09:30:00Z"), None);
}
