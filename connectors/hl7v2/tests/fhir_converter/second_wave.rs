//! The second wave's resource types (issue 19) against FHIR-Converter:
//! ServiceRequest, Specimen, Coverage, Appointment, DocumentReference and
//! Procedure, matched and counted as the first wave's are (see the parent
//! module), with the same ≥ [`MIN_RATE`] % rule.
//!
//! Matching, by content: ServiceRequest by a shared order number, else by
//! code; Specimen by a shared identifier, else by type and collection time;
//! Coverage and Appointment by a shared identifier; DocumentReference by
//! its TXA-12 (masterIdentifier) or other identifier; Procedure by code and
//! performed time, else by code; then, for each type, the single leftover
//! of each side. What FC writes and no map of ours does yet (a
//! ServiceRequest from RF1, SCH/AIS, ORC-8 or the order of an MDM or VXU, a
//! Specimen from OBR or SPM-3, a Procedure from PDA or PR1-25, a Coverage
//! from the IN1 of an order) is listed as unmatched, not compared.
//!
//! The documented differences here ([`Rule`]) read the message through
//! [`Facts`] and set aside only what they explain, as the parent's do.

use std::collections::BTreeSet;

use super::*;
use fhirlift_hl7v2::Segment;

/// The fields, in table order (after the parent's [`FIELDS`]).
pub(super) const FIELDS: &[&str] = &[
    "ServiceRequest.identifier",
    "ServiceRequest.status",
    "ServiceRequest.intent",
    "ServiceRequest.code",
    "ServiceRequest.authoredOn",
    "Specimen.identifier",
    "Specimen.type",
    "Specimen.collected",
    "Specimen.receivedTime",
    "Coverage.identifier",
    "Coverage.status",
    "Coverage.subscriberId",
    "Coverage.relationship",
    "Coverage.period",
    "Appointment.identifier",
    "Appointment.status",
    "Appointment.start",
    "Appointment.end",
    "Appointment.minutesDuration",
    "Appointment.appointmentType",
    "Appointment.serviceType",
    "DocumentReference.masterIdentifier",
    "DocumentReference.status",
    "DocumentReference.docStatus",
    "DocumentReference.type",
    "DocumentReference.date",
    "Procedure.identifier",
    "Procedure.status",
    "Procedure.code",
    "Procedure.code.text",
    "Procedure.performed",
];

/// TXA-17 codes our documented choice maps to `final` (MAPPING.md,
/// documents); FC writes `preliminary` for them.
const FINAL_COMPLETION: &[&str] = &["AU", "LA"];

/// The second wave's documented differences (IG ≠ FC, or the IG leaves the
/// choice to the implementer, and we follow the IG or our documented
/// choice); the text is the reason shown in the report.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(super) enum Rule {
    /// PR1 → Procedure.status: the IG leaves it to the implementer
    /// ("unknown" when the context does not tell); ours is the documented
    /// `completed` (an ADT message reports procedures that happened), FC
    /// says `unknown`. Rule: FC unknown, ours completed, and a PR1 of an
    /// ADT message has that PR1-3.1.
    ProcedureStatus,
    /// FC's ORU template makes every order a `filler-order`; the IG
    /// (the sheet, §5 ORC/OBR): `reflex-order` for OBR-11 = G, else `order`.
    /// Rule: FC filler-order, and an OBR of an ORU message with that
    /// OBR-4.1 has the OBR-11 that gives ours.
    ResultIntent,
    /// ORC-2 and OBR-2 (or ORC-3 and OBR-3) both valued and different: the
    /// sheet (§5 ORC/OBR) takes ORC's, FC OBR's (its last value wins, §1;
    /// the sheet's FC column says otherwise, the corpus shows this).
    /// Rule: FC values that are an OBR-2.1 / OBR-3.1 whose ORC has another
    /// ORC-2.1 / ORC-3.1 are set aside.
    OrderNumberPrecedence,
    /// FC adds IN2's numbers (IN2-6 Medicare, IN2-8 Medicaid, IN2-61
    /// member number) to Coverage.identifier; the IG maps IN1 only (its
    /// ADT maps give IN2 no target). Rule: FC values found in an IN2 and in
    /// no IN1 are set aside.
    In2Identifier,
    /// TXA-17 → docStatus: the IG gives no code map; ours is the
    /// documented choice (AU, LA → final), FC says `preliminary`. Rule: FC
    /// preliminary, ours final, and a TXA-17 is AU or LA.
    CompletionStatus,
    /// FC makes SCH-7 (the appointment reason, table 0276) the
    /// appointmentType; the IG maps a 0276 code there to reasonCode and
    /// takes appointmentType from SCH-8 (table 0277). Rule: FC's code is an
    /// SCH-7.1 and ours the same SCH's SCH-8.1.
    ReasonAsType,
}

impl Rule {
    pub(super) fn reason(self) -> &'static str {
        match self {
            Rule::ProcedureStatus => "PR1 status: the IG leaves it to us (documented: completed)",
            Rule::ResultIntent => {
                "FC's ORU orders are filler-order; the IG: order (reflex-order for OBR-11 G)"
            }
            Rule::OrderNumberPrecedence => "ORC-2/-3 ≠ OBR-2/-3: the sheet takes ORC's, FC OBR's",
            Rule::In2Identifier => "FC adds IN2 numbers to Coverage; the IG maps IN1 only",
            Rule::CompletionStatus => "TXA-17: no IG code map (documented: AU, LA → final)",
            Rule::ReasonAsType => "FC's appointmentType is SCH-7 (reason); the IG: SCH-8",
        }
    }
}

/// One OBR, with the ORC before it (if any).
struct Order {
    /// Whether its message is an ORU.
    result: bool,
    /// OBR-4.1.
    code: String,
    /// OBR-11, the specimen action code.
    action: String,
    /// (ORC-2.1, OBR-2.1) and (ORC-3.1, OBR-3.1).
    numbers: [(String, String); 2],
}

/// What the rules read from the message itself (every message of the file).
#[derive(Default)]
pub(super) struct Facts {
    orders: Vec<Order>,
    /// PR1-3.1 of each PR1 of an ADT message.
    procedures: Vec<String>,
    /// Every component of the IN1 / IN2 segments, decoded and trimmed.
    in1: BTreeSet<String>,
    in2: BTreeSet<String>,
    /// TXA-17 of each TXA.
    completion: Vec<String>,
    /// (SCH-7.1, SCH-8.1) of each SCH.
    schedules: Vec<(String, String)>,
}

impl Facts {
    pub(super) fn add(&mut self, m: &Message<'_>) {
        let kind = m.message_type().map(|(t, _)| t.trim().to_ascii_uppercase());
        let get = |s: &Segment<'_>, n: usize| {
            let raw = s.component(n, 0, 1).unwrap_or_default();
            m.value(raw).trim().to_owned()
        };
        let mut orc: Option<Segment<'_>> = None;
        for s in m.segments() {
            match s.name() {
                "ORC" => orc = Some(s),
                "OBR" => {
                    let of_orc = |n| orc.as_ref().map(|o| get(o, n)).unwrap_or_default();
                    self.orders.push(Order {
                        result: kind.as_deref() == Some("ORU"),
                        code: get(&s, 4),
                        action: get(&s, 11),
                        numbers: [(of_orc(2), get(&s, 2)), (of_orc(3), get(&s, 3))],
                    });
                    orc = None;
                }
                "PR1" if kind.as_deref() == Some("ADT") => self.procedures.push(get(&s, 3)),
                "IN1" => components(m, &s, &mut self.in1),
                "IN2" => components(m, &s, &mut self.in2),
                "TXA" => self.completion.push(get(&s, 17)),
                "SCH" => self.schedules.push((get(&s, 7), get(&s, 8))),
                _ => {}
            }
        }
    }

    /// [`Rule::ProcedureStatus`]: a PR1 of an ADT message has this code.
    fn reported_procedure(&self, code: &str) -> bool {
        !code.is_empty() && self.procedures.iter().any(|c| c == code)
    }

    /// [`Rule::ResultIntent`]: an OBR of an ORU coded `code` whose OBR-11
    /// gives the IG's intent `ours`.
    fn result_intent(&self, code: &str, ours: &str) -> bool {
        self.orders.iter().any(|o| {
            let ig = if o.action == "G" {
                "reflex-order"
            } else {
                "order"
            };
            o.result && o.code == code && ig == ours
        })
    }

    /// [`Rule::OrderNumberPrecedence`]: `v` is an OBR's placer or filler
    /// number whose ORC has another one.
    fn obr_over_orc(&self, v: &str) -> bool {
        self.orders.iter().any(|o| {
            o.numbers
                .iter()
                .any(|(orc, obr)| obr == v && !orc.is_empty() && orc != v)
        })
    }

    /// [`Rule::In2Identifier`]: `v` is in an IN2 and in no IN1.
    fn in2_only(&self, v: &str) -> bool {
        self.in2.contains(v) && !self.in1.contains(v)
    }

    /// [`Rule::CompletionStatus`]: a TXA-17 our choice maps to `final`.
    fn final_completion(&self) -> bool {
        self.completion
            .iter()
            .any(|c| FINAL_COMPLETION.contains(&c.as_str()))
    }

    /// [`Rule::ReasonAsType`]: an SCH with SCH-7.1 `fc` and SCH-8.1 `ours`.
    fn reason_as_type(&self, ours: &str, fc: &str) -> bool {
        self.schedules.iter().any(|(r, t)| r == fc && t == ours)
    }
}

/// Every component (and sub-component) of a segment's fields.
fn components(m: &Message<'_>, s: &Segment<'_>, into: &mut BTreeSet<String>) {
    let d = m.delimiters();
    for n in 1..=s.field_count() {
        for rep in s.repetitions(n) {
            for part in rep.split(|c| c == d.component || Some(c) == d.subcomponent) {
                let v = m.value(part).trim().to_owned();
                if !v.is_empty() {
                    into.insert(v);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- compare

pub(super) fn compare(t: &mut Tally, file: &str, src: &Source, ours: &[Value], fc: &[Value]) {
    let facts = &src.wave;
    service_requests(t, file, facts, (ours, fc));
    specimens(t, file, (ours, fc));
    coverages(t, file, facts, (ours, fc));
    appointments(t, file, facts, (ours, fc));
    documents(t, file, facts, (ours, fc));
    procedures(t, file, facts, (ours, fc));
}

/// The first code of a CodeableConcept element.
fn code(r: &Value, key: &str) -> Option<String> {
    first_coding(r.get(key)).map(|c| c.0)
}

/// Both have a first code at `key`, and the same.
fn same_first_code(key: &str) -> impl Fn(&Value, &Value) -> bool + '_ {
    move |o, f| code(o, key).is_some() && code(o, key) == code(f, key)
}

fn when(r: &Value, path: &[&str]) -> Option<When> {
    text(get(r, path)).map(|s| When::parse(&s))
}

/// Identifier values and the masterIdentifier's.
fn ids(r: &Value) -> Vec<String> {
    let mut ids = identifier_values(r);
    ids.extend(text(get(r, &["masterIdentifier", "value"])));
    ids
}

/// A matched pair, compared field by field into the tally.
struct Pair<'t, 'a, 'v> {
    t: &'t mut Tally,
    at: At<'a>,
    o: &'v Value,
    f: &'v Value,
}

impl<'t, 'a, 'v> Pair<'t, 'a, 'v> {
    /// Named by FC's first identifier value, else its code.
    fn new(t: &'t mut Tally, file: &'a str, kind: &str, (o, f): (&'v Value, &'v Value)) -> Self {
        let name = ids(f).into_iter().next();
        let name = name.or_else(|| code(f, "code").map(|c| format!("code {c}")));
        let resource = format!("{kind} {}", label(name.as_ref()));
        let at = At { file, resource };
        Pair { t, at, o, f }
    }

    /// What `read` finds on each side, equal.
    fn values<T: std::fmt::Debug + PartialEq>(
        &mut self,
        field: &'static str,
        read: impl Fn(&Value) -> Option<T>,
    ) {
        self.t.equal(&self.at, field, read(self.o), read(self.f));
    }

    fn texts(&mut self, field: &'static str, path: &[&str]) {
        self.values(field, |r| text(get(r, path)));
    }

    fn whens(&mut self, field: &'static str, path: &[&str]) {
        self.values(field, |r| when(r, path));
    }

    /// The texts at `key`; a difference `explained` (given ours and FC's)
    /// says `why` explains is set aside.
    fn texts_unless(
        &mut self,
        (field, key): (&'static str, &str),
        why: Rule,
        explained: impl Fn(&str, &str) -> bool,
    ) {
        let (o, f) = (text(self.o.get(key)), text(self.f.get(key)));
        self.t.compare(&self.at, field, o, f, |o, f| {
            unless(same(o, f), explained(o, f), Known::Wave(why))
        });
    }

    /// The CodeableConcepts at `key` ([`same_code`]).
    fn codes(&mut self, field: &'static str, key: &str) {
        self.t
            .codes(&self.at, field, self.o.get(key), self.f.get(key));
    }

    fn identifiers(&mut self, field: &'static str) {
        self.t.identifiers(&self.at, field, self.o, self.f);
    }

    /// FC identifier values `explained` says `why` explains are set aside.
    fn identifiers_but(
        &mut self,
        field: &'static str,
        why: Rule,
        explained: impl Fn(&str) -> bool,
    ) {
        let sides = (self.o, self.f);
        self.t
            .identifiers_but(&self.at, field, Known::Wave(why), sides, explained);
    }
}

fn service_requests(t: &mut Tally, file: &str, facts: &Facts, sides: (&[Value], &[Value])) {
    let passes: Passes<'_> = &[&shares_identifier, &same_first_code("code")];
    for pair in t.matched((file, "ServiceRequest"), sides, passes, true) {
        let mut p = Pair::new(t, file, "ServiceRequest", pair);
        p.identifiers_but(
            "ServiceRequest.identifier",
            Rule::OrderNumberPrecedence,
            |v| facts.obr_over_orc(v),
        );
        p.texts("ServiceRequest.status", &["status"]);
        let c = code(p.f, "code").unwrap_or_default();
        p.texts_unless(
            ("ServiceRequest.intent", "intent"),
            Rule::ResultIntent,
            |o, f| f == "filler-order" && facts.result_intent(&c, o),
        );
        p.codes("ServiceRequest.code", "code");
        p.whens("ServiceRequest.authoredOn", &["authoredOn"]);
    }
}

/// collection.collectedDateTime, or the collectedPeriod's start and end.
fn collected(r: &Value) -> Option<(When, Option<When>)> {
    match when(r, &["collection", "collectedDateTime"]) {
        Some(at) => Some((at, None)),
        None => {
            let period = |end| when(r, &["collection", "collectedPeriod", end]);
            Some((period("start")?, period("end")))
        }
    }
}

fn specimens(t: &mut Tally, file: &str, sides: (&[Value], &[Value])) {
    let by_type = same_first_code("type");
    let by_content = |o: &Value, f: &Value| by_type(o, f) && collected(o) == collected(f);
    let passes: Passes<'_> = &[&shares_identifier, &by_content];
    for pair in t.matched((file, "Specimen"), sides, passes, true) {
        let mut p = Pair::new(t, file, "Specimen", pair);
        p.identifiers("Specimen.identifier");
        p.codes("Specimen.type", "type");
        p.values("Specimen.collected", collected);
        p.whens("Specimen.receivedTime", &["receivedTime"]);
    }
}

/// period.start and .end, when either is there.
fn period(r: &Value) -> Option<(Option<When>, Option<When>)> {
    let (start, end) = (when(r, &["period", "start"]), when(r, &["period", "end"]));
    (start.is_some() || end.is_some()).then_some((start, end))
}

fn coverages(t: &mut Tally, file: &str, facts: &Facts, sides: (&[Value], &[Value])) {
    let passes: Passes<'_> = &[&shares_identifier];
    for pair in t.matched((file, "Coverage"), sides, passes, true) {
        let mut p = Pair::new(t, file, "Coverage", pair);
        p.identifiers_but("Coverage.identifier", Rule::In2Identifier, |v| {
            facts.in2_only(v)
        });
        p.texts("Coverage.status", &["status"]);
        p.texts("Coverage.subscriberId", &["subscriberId"]);
        p.codes("Coverage.relationship", "relationship");
        p.values("Coverage.period", period);
    }
}

fn appointments(t: &mut Tally, file: &str, facts: &Facts, sides: (&[Value], &[Value])) {
    let passes: Passes<'_> = &[&shares_identifier];
    for pair in t.matched((file, "Appointment"), sides, passes, true) {
        let mut p = Pair::new(t, file, "Appointment", pair);
        p.identifiers("Appointment.identifier");
        p.texts("Appointment.status", &["status"]);
        p.whens("Appointment.start", &["start"]);
        p.whens("Appointment.end", &["end"]);
        p.values("Appointment.minutesDuration", |r| {
            r.get("minutesDuration").and_then(Value::as_u64)
        });
        let (o, f) = (p.o.get("appointmentType"), p.f.get("appointmentType"));
        p.t.compare(
            &p.at,
            "Appointment.appointmentType",
            first_coding(o),
            first_coding(f),
            |o, f| {
                let explained = facts.reason_as_type(&o.0, &f.0);
                unless(same_code(o, f), explained, Known::Wave(Rule::ReasonAsType))
            },
        );
        let service = |r: &Value| array(r, "serviceType").first().cloned();
        let (o, f) = (service(p.o), service(p.f));
        p.t.codes(&p.at, "Appointment.serviceType", o.as_ref(), f.as_ref());
    }
}

fn documents(t: &mut Tally, file: &str, facts: &Facts, sides: (&[Value], &[Value])) {
    let by_ids = |o: &Value, f: &Value| {
        let o = ids(o);
        ids(f).iter().any(|v| o.contains(v))
    };
    let passes: Passes<'_> = &[&by_ids];
    for pair in t.matched((file, "DocumentReference"), sides, passes, true) {
        let mut p = Pair::new(t, file, "DocumentReference", pair);
        p.texts(
            "DocumentReference.masterIdentifier",
            &["masterIdentifier", "value"],
        );
        p.texts("DocumentReference.status", &["status"]);
        let field = ("DocumentReference.docStatus", "docStatus");
        p.texts_unless(field, Rule::CompletionStatus, |o, f| {
            f == "preliminary" && o == "final" && facts.final_completion()
        });
        p.codes("DocumentReference.type", "type");
        p.whens("DocumentReference.date", &["date"]);
    }
}

/// performedDateTime, else the performedPeriod's start.
fn performed(r: &Value) -> Option<When> {
    when(r, &["performedDateTime"]).or_else(|| when(r, &["performedPeriod", "start"]))
}

fn procedures(t: &mut Tally, file: &str, facts: &Facts, sides: (&[Value], &[Value])) {
    let by_code = same_first_code("code");
    let timed = |o: &Value, f: &Value| by_code(o, f) && performed(o) == performed(f);
    let passes: Passes<'_> = &[&timed, &by_code];
    for pair in t.matched((file, "Procedure"), sides, passes, true) {
        let mut p = Pair::new(t, file, "Procedure", pair);
        p.identifiers("Procedure.identifier");
        let c = code(p.f, "code").unwrap_or_default();
        p.texts_unless(
            ("Procedure.status", "status"),
            Rule::ProcedureStatus,
            |o, f| f == "unknown" && o == "completed" && facts.reported_procedure(&c),
        );
        p.codes("Procedure.code", "code");
        p.texts("Procedure.code.text", &["code", "text"]);
        p.values("Procedure.performed", performed);
    }
}

#[test]
fn rules_set_aside_only_what_they_explain() {
    let text = "MSH|^~\\&|A|B|C|D|20230101||ORU^R01^ORU_R01|1|P|2.5\r\
                PID|1||MRN1^^^H^MR||DOE^JO\r\
                ORC|RE|P-1|F-1\r\
                OBR|1|P-2|F-1|X1^x^LN|||||||G\r\
                OBR|2|P-3||X2^x^LN\r\
                PR1|1||P9^p^SCT\r\
                IN1|1|PLAN|PAYOR|Payor Inc|||||||||||||||||||||||||||||||||POL-1\r\
                IN2|1||||||MC-1|||||||||||||||||||||||||||||||||||||||||||||||||||||||||||POL-1\r\
                TXA|1|CN|TX|||||||||DOC-1|||||AU\r\
                SCH|1|2|||||CHECKUP|Normal\r";
    let m = Message::parse(text.as_bytes(), 0).unwrap();
    let mut facts = Facts::default();
    facts.add(&m);
    // OBR-2 P-2 under ORC-2 P-1: FC's P-2 is explained, not ORC's P-1, nor
    // the filler number both agree on, nor an OBR without an ORC
    assert!(facts.obr_over_orc("P-2"));
    assert!(!facts.obr_over_orc("P-1") && !facts.obr_over_orc("F-1") && !facts.obr_over_orc("P-3"));
    // OBR-11 G gives reflex-order for that order only
    assert!(facts.result_intent("X1", "reflex-order") && !facts.result_intent("X1", "order"));
    assert!(facts.result_intent("X2", "order") && !facts.result_intent("X3", "order"));
    // a PR1 counts only in an ADT message
    assert!(!facts.reported_procedure("P9"));
    // IN2-7 MC-1 is IN2's only; POL-1 is in IN1 too
    assert!(facts.in2_only("MC-1") && !facts.in2_only("POL-1") && !facts.in2_only("PLAN"));
    assert!(facts.final_completion());
    assert!(
        facts.reason_as_type("Normal", "CHECKUP") && !facts.reason_as_type("CHECKUP", "Normal")
    );

    let adt = "MSH|^~\\&|A|B|C|D|20230101||ADT^A01^ADT_A01|1|P|2.5\rPR1|1||P9^p^SCT\rTXA|1|CN|TX|||||||||D|||||IP\r";
    let mut facts = Facts::default();
    facts.add(&Message::parse(adt.as_bytes(), 0).unwrap());
    assert!(facts.reported_procedure("P9") && !facts.reported_procedure("P8"));
    assert!(!facts.final_completion() && !facts.result_intent("X1", "order"));
}
