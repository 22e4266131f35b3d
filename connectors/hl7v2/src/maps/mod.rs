//! The built-in v2-to-FHIR maps: one message in, its FHIR resources out.
//!
//! They follow the HL7 V2-to-FHIR implementation guide as laid out in the
//! mapping sheet (`HL7V2-TO-FHIR.md`); where the guide and Microsoft's
//! FHIR-Converter differ, the guide wins unless ARCHITECTURE.md says why not.
//!
//! - ADT (A01-A08, A11-A14, A28, A31): PID → Patient, PV1 → Encounter
//!   (not for A28/A31, which are about the person), NK1 → RelatedPerson,
//!   AL1 → AllergyIntolerance, DG1 → Condition (and Encounter.diagnosis).
//! - ORU^R01: per patient group a Patient (and Encounter); per OBR a
//!   DiagnosticReport; per OBX an Observation, with the NTEs after it as notes.
//! - VXU^V04: Patient, RelatedPersons, per RXA an Immunization (RXR route
//!   and site), and OBX → Observation `partOf` the Immunization.
//!
//! Invariant: no I/O. Identities come from the message, never from random
//! ids, so replaying an archive updates instead of duplicating:
//! the Patient is PID-3 (its first identifier) with its assigning authority,
//! the Encounter PV1-19, a report its filler order number (else placer),
//! an Observation its report's number plus the OBX set id, an Immunization
//! its filler (else placer) order number, else the patient, vaccine and date.
//! An order number is the identity in a system of its kind
//! (`urn:fhirlift:hl7v2:FILL:<authority>`, added as the first identifier),
//! so that a conditional write never matches another resource that carries
//! the same number as a placer, or under a shared default authority.
//! An identifier without an assigning authority takes the sending facility
//! (MSH-4) as its authority. Resources inside a message refer to each other
//! by `urn:uuid`: the message is written as one transaction.

use std::collections::HashMap;

/// The system of an identity taken from an order number: its authority's
/// system and its kind (`FILL`, `PLAC`), so that a conditional write on it
/// matches only resources identified by that kind of number.
fn order_system(authority: &str, kind: &str) -> String {
    format!("urn:fhirlift:hl7v2:{kind}:{authority}")
}

use fhirlift_core::group::derived_urn_uuid;
use fhirlift_hl7v2::fhir::{self, Authorities, Composite, tables};
use fhirlift_hl7v2::{Delimiters, Message, Segment, Zone};
use serde_json::{Map, Value, json};

/// US Core's race extension (PID-10).
const US_CORE_RACE: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race";
/// US Core's ethnicity extension (PID-22).
const US_CORE_ETHNICITY: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity";

/// The resource types the built-in maps write.
pub const EMITTED_TYPES: &[&str] = &[
    "Patient",
    "Encounter",
    "RelatedPerson",
    "AllergyIntolerance",
    "Condition",
    "DiagnosticReport",
    "Observation",
    "Immunization",
];

/// ADT events with the A01 structure that the map covers.
const ADT_EVENTS: &[&str] = &[
    "A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A09", "A10", "A11", "A12", "A13",
    "A14", "A15", "A16", "A28", "A31",
];

const THO: &str = "http://terminology.hl7.org/CodeSystem/";

/// How messages are mapped: the settings of the `hl7v2` map.
#[derive(Debug, Clone)]
pub struct MapOptions {
    /// The zone of times written without an offset.
    pub zone: Zone,
    /// Assigning authorities → identifier systems.
    pub authorities: Authorities,
    /// The system of identifiers whose message names no authority, neither
    /// in the identifier (CX.4) nor as sending facility (MSH-4).
    pub default_authority: Option<String>,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            zone: Zone::utc(),
            authorities: Authorities::new(
                Vec::<(String, String)>::new(),
                fhirlift_hl7v2::fhir::FALLBACK_AUTHORITY_BASE,
            ),
            default_authority: None,
        }
    }
}

/// One resource a message maps to.
#[derive(Debug, Clone)]
pub struct MappedResource {
    pub resource_type: &'static str,
    /// `urn:uuid:…`, stable for the message, used by references inside it.
    pub full_url: String,
    /// The identifier the resource is written on (system, value).
    pub identity: (String, String),
    pub resource: Value,
}

/// What a message maps to.
#[derive(Debug, Clone)]
pub enum MessageMap {
    Mapped(Vec<MappedResource>),
    /// No built-in map for this message type (`MDM^T02`): counted, not failed.
    Unmapped {
        message_type: String,
    },
}

/// A message that cannot be mapped (no patient identifier, ...). The text
/// may quote the message: it goes to the rejects file, never to logs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct MapFailure(pub String);

/// Maps one message.
pub fn map_message(message: &Message<'_>, options: &MapOptions) -> Result<MessageMap, MapFailure> {
    let (kind, event) = message.message_type().unwrap_or_default();
    let message_type = if event.is_empty() {
        kind.clone()
    } else {
        format!("{kind}^{event}")
    };
    let mut m = Mapper::new(message, options);
    match (kind.as_str(), event.as_str()) {
        ("ADT", e) if ADT_EVENTS.contains(&e) => m.adt(e)?,
        ("ORU", "R01") => m.oru()?,
        ("VXU", "V04") => m.vxu()?,
        _ => return Ok(MessageMap::Unmapped { message_type }),
    }
    Ok(MessageMap::Mapped(m.finish()))
}

/// A resource's JSON object, `resourceType` first.
fn resource(resource_type: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("resourceType".into(), Value::String(resource_type.into()));
    m
}

/// A reference to a resource of this message.
#[derive(Debug, Clone)]
struct Local {
    resource_type: &'static str,
    full_url: String,
    system: String,
    value: String,
}

impl Local {
    fn reference(&self) -> Value {
        json!({ "reference": self.full_url })
    }
}

struct Mapper<'m, 'o> {
    m: &'m Message<'m>,
    d: Delimiters,
    o: &'o MapOptions,
    /// The system of identifiers that name no authority (from MSH-4).
    facility_system: Option<String>,
    out: Vec<MappedResource>,
    /// (type, system, value) → index in `out`: a repeated identity replaces.
    seen: HashMap<(&'static str, String, String), usize>,
}

impl<'m, 'o> Mapper<'m, 'o> {
    fn new(m: &'m Message<'m>, o: &'o MapOptions) -> Self {
        let d = m.delimiters();
        let facility_system = m
            .segment("MSH")
            .and_then(|msh| {
                let raw = msh.field(4)?;
                let hd = Composite::new(raw, &d);
                o.authorities.system(
                    hd.get(1).as_deref(),
                    hd.get(2).as_deref(),
                    hd.get(3).as_deref(),
                )
            })
            .or_else(|| o.default_authority.clone());
        Mapper {
            m,
            d,
            o,
            facility_system,
            out: Vec::new(),
            seen: HashMap::new(),
        }
    }

    fn finish(self) -> Vec<MappedResource> {
        self.out
    }

    // ---- reading ----

    /// Field `n`'s first repetition as written, when not empty.
    fn raw<'s>(&self, s: &Segment<'s>, n: usize) -> Option<&'s str> {
        s.repetitions(n)
            .into_iter()
            .next()
            .filter(|r| !r.is_empty())
    }

    fn reps<'s>(&self, s: &Segment<'s>, n: usize) -> Vec<&'s str> {
        s.repetitions(n)
            .into_iter()
            .filter(|r| !r.is_empty())
            .collect()
    }

    /// Component `c` of field `n` (first repetition), decoded.
    fn text(&self, s: &Segment<'_>, n: usize, c: usize) -> Option<String> {
        Composite::new(self.raw(s, n)?, &self.d)
            .get(c)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn datetime(&self, s: &Segment<'_>, n: usize) -> Option<Value> {
        let raw = self.text(s, n, 1)?;
        match fhir::datetime(&raw, &self.o.zone) {
            Ok(v) => v.map(Value::String),
            Err(e) => {
                self.skip_warning(s, n, &e.0);
                None
            }
        }
    }

    fn date(&self, s: &Segment<'_>, n: usize) -> Option<Value> {
        let raw = self.text(s, n, 1)?;
        match fhir::date(&raw) {
            Ok(v) => v.map(Value::String),
            Err(e) => {
                self.skip_warning(s, n, &e.0);
                None
            }
        }
    }

    fn instant(&self, s: &Segment<'_>, n: usize) -> Option<Value> {
        let raw = self.text(s, n, 1)?;
        fhir::instant(&raw, &self.o.zone)
            .ok()
            .flatten()
            .map(Value::String)
    }

    /// A value that does not read is left out, and said so in the log
    /// (where, never what: the value may be PHI).
    fn skip_warning(&self, s: &Segment<'_>, n: usize, why: &str) {
        tracing::warn!(
            offset = self.m.offset(),
            control_id = self.m.control_id().unwrap_or_default(),
            field = format!("{}-{n}", s.name()),
            "left out: {why}"
        );
    }

    fn codeable(&self, s: &Segment<'_>, n: usize) -> Option<Value> {
        fhir::codeable_concept(self.raw(s, n)?, &self.d)
    }

    fn list(
        &self,
        s: &Segment<'_>,
        n: usize,
        f: impl Fn(&str, &Delimiters) -> Option<Value>,
    ) -> Vec<Value> {
        self.reps(s, n)
            .into_iter()
            .filter_map(|r| f(r, &self.d))
            .collect()
    }

    /// CX repetitions → Identifiers; one without a system takes the
    /// sending facility's.
    fn identifiers(&self, s: &Segment<'_>, n: usize) -> Vec<Value> {
        let mut out = self.list(s, n, |r, d| fhir::identifier(r, d, &self.o.authorities));
        for id in &mut out {
            self.default_system(id);
        }
        out
    }

    fn default_system(&self, identifier: &mut Value) {
        if identifier.get("system").is_none()
            && let (Some(obj), Some(system)) = (identifier.as_object_mut(), &self.facility_system)
        {
            obj.insert("system".into(), Value::String(system.clone()));
        }
    }

    /// An EI at field `n` → Identifier (with the facility's system when it
    /// names no authority) and its identity.
    fn entity_id(&self, s: &Segment<'_>, n: usize) -> Option<(Value, String, String)> {
        let mut id = fhir::entity_identifier(self.raw(s, n)?, &self.d, &self.o.authorities)?;
        self.default_system(&mut id);
        let system = id.get("system")?.as_str()?.to_owned();
        let value = id.get("value")?.as_str()?.to_owned();
        Some((id, system, value))
    }

    // ---- writing ----

    /// Adds a resource (built with [`resource`], so `resourceType` comes first).
    fn push(
        &mut self,
        resource_type: &'static str,
        system: String,
        value: String,
        resource: Value,
    ) -> Local {
        let full_url = derived_urn_uuid(&[resource_type, &system, &value]);
        let local = Local {
            resource_type,
            full_url: full_url.clone(),
            system: system.clone(),
            value: value.clone(),
        };
        let mapped = MappedResource {
            resource_type,
            full_url,
            identity: (system.clone(), value.clone()),
            resource,
        };
        match self
            .seen
            .get(&(resource_type, system.clone(), value.clone()))
        {
            Some(&i) => self.out[i] = mapped,
            None => {
                self.seen
                    .insert((resource_type, system, value), self.out.len());
                self.out.push(mapped);
            }
        }
        local
    }

    /// An identity derived from a parent's: same system, the parent's value
    /// with a suffix (`MRN123-NK1-2`). Unique because searches are per type.
    /// A parent identified by an order number lends its authority's system
    /// (not the order kind's: `FL9901-OBX-1` is in the lab's system).
    fn derived(parent: &Local, suffix: &str) -> (String, String) {
        let system = ["FILL", "PLAC"]
            .iter()
            .find_map(|kind| parent.system.strip_prefix(&order_system("", kind)))
            .unwrap_or(&parent.system);
        (system.to_owned(), format!("{}-{suffix}", parent.value))
    }

    fn control_id(&self) -> String {
        self.m.control_id().unwrap_or_default()
    }

    // ---- messages ----

    fn adt(&mut self, event: &str) -> Result<(), MapFailure> {
        let pid = self
            .m
            .segment("PID")
            .ok_or_else(|| MapFailure(format!("ADT^{event} without a PID segment")))?;
        let patient = self.patient(&pid)?;
        let mut encounter = None;
        if !matches!(event, "A28" | "A31")
            && let Some(pv1) = self.m.segment("PV1")
        {
            encounter = self.encounter(&pv1, &patient, Some(event));
        }
        let segments: Vec<Segment<'_>> = self.m.segments().collect();
        let mut diagnoses = Vec::new();
        let mut last_obs: Option<Local> = None;
        let mut obx_index = 0;
        for (i, s) in segments.iter().enumerate() {
            match s.name() {
                "OBX" => {
                    // observations about the visit (height, weight, ...)
                    obx_index += 1;
                    let parent = encounter.clone().unwrap_or_else(|| patient.clone());
                    last_obs =
                        self.observation(s, &patient, encounter.as_ref(), &parent, obx_index, None);
                }
                "NTE" => {
                    if let Some(o) = &last_obs {
                        self.note(s, o);
                    }
                }
                "PD1" => self.primary_care(s, &patient),
                "NK1" => self.related_person(s, &patient, i),
                "AL1" => self.allergy(s, &patient, i),
                "DG1" => {
                    if let Some(d) = self.condition(s, &patient, encounter.as_ref(), i) {
                        diagnoses.push(d);
                    }
                }
                _ => {}
            }
        }
        if let Some(enc) = &encounter
            && !diagnoses.is_empty()
        {
            let at = self.seen[&("Encounter", enc.system.clone(), enc.value.clone())];
            if let Some(obj) = self.out[at].resource.as_object_mut() {
                obj.insert("diagnosis".into(), Value::Array(diagnoses));
            }
        }
        Ok(())
    }

    fn oru(&mut self) -> Result<(), MapFailure> {
        let segments: Vec<Segment<'_>> = self.m.segments().collect();
        let mut patient: Option<Local> = None;
        let mut encounter: Option<Local> = None;
        let mut orc: Option<Segment<'_>> = None;
        // the report being filled: its Local, resource index, and results
        let mut report: Option<(Local, Vec<Value>)> = None;
        let mut last_obs: Option<Local> = None;
        let mut obx_index = 0;
        for s in &segments {
            match s.name() {
                "PID" => {
                    self.close_report(&mut report);
                    patient = Some(self.patient(s)?);
                    encounter = None;
                    orc = None;
                    last_obs = None;
                }
                "PD1" => {
                    if let Some(p) = patient.clone() {
                        self.primary_care(s, &p);
                    }
                }
                "PV1" => {
                    if let Some(p) = &patient {
                        encounter = self.encounter(s, p, None);
                    }
                }
                "ORC" => orc = Some(*s),
                "OBR" => {
                    self.close_report(&mut report);
                    let p = patient
                        .clone()
                        .ok_or_else(|| MapFailure("ORU^R01: an OBR comes before any PID".into()))?;
                    report = Some((
                        self.report(s, orc.as_ref(), &p, encounter.as_ref())?,
                        Vec::new(),
                    ));
                    orc = None;
                    last_obs = None;
                    obx_index = 0;
                }
                "OBX" => {
                    obx_index += 1;
                    let (Some(p), Some((rep, results))) = (&patient, &mut report) else {
                        continue;
                    };
                    let rep = rep.clone();
                    let obs = self.observation(s, p, encounter.as_ref(), &rep, obx_index, None);
                    if let Some(o) = &obs {
                        results.push(o.reference());
                    }
                    last_obs = obs;
                }
                "NTE" => {
                    if let Some(o) = &last_obs {
                        self.note(s, o);
                    }
                }
                _ => {}
            }
        }
        self.close_report(&mut report);
        if patient.is_none() {
            return Err(MapFailure("ORU^R01 without a PID segment".into()));
        }
        Ok(())
    }

    fn close_report(&mut self, report: &mut Option<(Local, Vec<Value>)>) {
        if let Some((rep, results)) = report.take()
            && !results.is_empty()
        {
            let at = self.seen[&("DiagnosticReport", rep.system.clone(), rep.value.clone())];
            if let Some(obj) = self.out[at].resource.as_object_mut() {
                obj.insert("result".into(), Value::Array(results));
            }
        }
    }

    fn vxu(&mut self) -> Result<(), MapFailure> {
        let pid = self
            .m
            .segment("PID")
            .ok_or_else(|| MapFailure("VXU^V04 without a PID segment".into()))?;
        let patient = self.patient(&pid)?;
        let segments: Vec<Segment<'_>> = self.m.segments().collect();
        let mut orc: Option<Segment<'_>> = None;
        let mut immunization: Option<Local> = None;
        let mut last_obs: Option<Local> = None;
        let mut obx_index = 0;
        for (i, s) in segments.iter().enumerate() {
            match s.name() {
                "PD1" => self.primary_care(s, &patient),
                "NK1" => self.related_person(s, &patient, i),
                "ORC" => {
                    orc = Some(*s);
                    immunization = None;
                    obx_index = 0;
                }
                "RXA" => {
                    let rxr = segments[i + 1..]
                        .iter()
                        .take_while(|n| !matches!(n.name(), "RXA" | "ORC"))
                        .find(|n| n.name() == "RXR")
                        .copied();
                    immunization =
                        Some(self.immunization(s, orc.as_ref(), rxr.as_ref(), &patient)?);
                    last_obs = None;
                }
                "OBX" => {
                    obx_index += 1;
                    let Some(imm) = &immunization else {
                        continue;
                    };
                    let imm = imm.clone();
                    last_obs = self.observation(s, &patient, None, &imm, obx_index, Some(&imm));
                }
                "NTE" => {
                    if let Some(o) = &last_obs {
                        self.note(s, o);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    // ---- segments ----

    fn patient(&mut self, pid: &Segment<'_>) -> Result<Local, MapFailure> {
        let mut identifiers = Vec::new();
        identifiers.extend(self.identifiers(pid, 2));
        let pid3 = self.identifiers(pid, 3);
        let pid4 = self.identifiers(pid, 4);
        // PID-3 names the patient; PID-2 and PID-4 (older messages) stand in
        let identity = pid3
            .iter()
            .chain(&identifiers)
            .chain(&pid4)
            .find_map(|id| {
                Some((
                    id.get("system")?.as_str()?.to_owned(),
                    id.get("value")?.as_str()?.to_owned(),
                ))
            })
            .ok_or_else(|| {
                MapFailure(format!(
                    "PID-3 has no patient identifier with an assigning authority (CX.4) or a sending facility (MSH-4) to scope it; fhirlift writes Patient?identifier=system|value so that a replay updates instead of duplicating: set map.default_authority to the system of this archive's identifiers{}",
                    if pid3.is_empty() { " (PID-3 is empty)" } else { "" }
                ))
            })?;
        identifiers.extend(pid3);
        identifiers.extend(pid4);
        if let Some(ssn) = self.text(pid, 19, 1) {
            identifiers.push(json!({
                "type": { "coding": [{ "system": format!("{THO}v2-0203"), "code": "SS" }] },
                "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": ssn,
            }));
        }
        if let Some(dl) = self.text(pid, 20, 1) {
            let mut id = json!({
                "type": { "coding": [{ "system": format!("{THO}v2-0203"), "code": "DL" }] },
                "value": dl,
            });
            if let Some(end) = self.raw(pid, 20).and_then(|r| {
                Composite::new(r, &self.d)
                    .get(3)
                    .and_then(|t| fhir::date(&t).ok().flatten())
            }) {
                id["period"] = json!({ "end": end });
            }
            identifiers.push(id);
        }
        let mut p = resource("Patient");
        p.insert("identifier".into(), Value::Array(identifiers));
        let mut names = self.list(pid, 5, fhir::human_name);
        // XPN.15 "called by" is a name of its own (use nickname), after the guide
        names.extend(self.list(pid, 5, fhir::called_by_name));
        names.extend(self.list(pid, 9, fhir::human_name));
        if !names.is_empty() {
            p.insert("name".into(), Value::Array(names));
        }
        let mut telecom = self.list(pid, 13, |r, d| fhir::contact_point(r, d, Some("home")));
        telecom.extend(self.list(pid, 14, |r, d| fhir::contact_point(r, d, Some("work"))));
        if !telecom.is_empty() {
            p.insert("telecom".into(), Value::Array(telecom));
        }
        if let Some(code) = self.text(pid, 8, 1) {
            match tables::gender(&code) {
                Some(g) => {
                    p.insert("gender".into(), json!(g));
                }
                None => self.skip_warning(pid, 8, "not a code of table 0001"),
            }
        }
        if let Some(birth) = self.date(pid, 7) {
            p.insert("birthDate".into(), birth);
        }
        match self.text(pid, 30, 1).as_deref() {
            _ if self.text(pid, 29, 1).is_some() => {
                if let Some(when) = self.datetime(pid, 29) {
                    p.insert("deceasedDateTime".into(), when);
                } else {
                    p.insert("deceasedBoolean".into(), json!(true));
                }
            }
            Some("Y") => {
                p.insert("deceasedBoolean".into(), json!(true));
            }
            Some("N") => {
                p.insert("deceasedBoolean".into(), json!(false));
            }
            _ => {}
        }
        let mut addresses = self.list(pid, 11, fhir::address);
        if let Some(county) = self.text(pid, 12, 1)
            && addresses.len() == 1
            && addresses[0].get("district").is_none()
        {
            addresses[0]["district"] = json!(county);
        }
        if !addresses.is_empty() {
            p.insert("address".into(), Value::Array(addresses));
        }
        if let Some(code) = self.text(pid, 16, 1) {
            let marital = match tables::marital_status(&code) {
                Some((system, code, display)) => {
                    json!({ "coding": [{ "system": system, "code": code, "display": display }] })
                }
                None => self
                    .codeable(pid, 16)
                    .unwrap_or_else(|| json!({ "text": code })),
            };
            p.insert("maritalStatus".into(), marital);
        }
        if let Some(flag) = self.text(pid, 24, 1) {
            match self.text(pid, 25, 1).and_then(|n| n.parse::<u32>().ok()) {
                Some(order) => {
                    p.insert("multipleBirthInteger".into(), json!(order));
                }
                None if flag == "Y" || flag == "N" => {
                    p.insert("multipleBirthBoolean".into(), json!(flag == "Y"));
                }
                None => {}
            }
        }
        let languages: Vec<Value> = self
            .reps(pid, 15)
            .into_iter()
            .filter_map(|r| {
                let c = Composite::new(r, &self.d);
                let code = c.get(1)?;
                let mut concept = match tables::language(code.trim()) {
                    Some(bcp) => {
                        json!({ "coding": [{ "system": "urn:ietf:bcp:47", "code": bcp }] })
                    }
                    None => fhir::codeable_concept(r, &self.d)?,
                };
                if let Some(text) = c.get(2) {
                    concept["text"] = json!(text);
                }
                Some(json!({ "language": concept }))
            })
            .collect();
        if !languages.is_empty() {
            p.insert("communication".into(), Value::Array(languages));
        }
        let mut extensions = Vec::new();
        if let Some(maiden) = self.text(pid, 6, 1) {
            extensions.push(json!({
                "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                "valueString": maiden,
            }));
        }
        extensions.extend(self.us_core_category(pid, 10, US_CORE_RACE, 6, tables::race));
        extensions.extend(self.us_core_category(pid, 22, US_CORE_ETHNICITY, 1, tables::ethnicity));
        if !extensions.is_empty() {
            p.insert("extension".into(), Value::Array(extensions));
        }
        Ok(self.push("Patient", identity.0, identity.1, Value::Object(p)))
    }

    /// PID-10 race or PID-22 ethnicity as a US Core extension: each
    /// repetition's code in `ombCategory` (at most `most_omb`; further ones
    /// stay in the text) or `detailed`, and `text` (required) = the code
    /// system's displays for known codes, else the message's displays, or
    /// codes, joined with `+` (as FHIR-Converter writes it). A local code
    /// is kept in the text only.
    fn us_core_category(
        &self,
        pid: &Segment<'_>,
        n: usize,
        url: &str,
        most_omb: usize,
        lookup: fn(&str, Option<&str>) -> Option<tables::Category>,
    ) -> Option<Value> {
        let mut parts = Vec::new();
        let mut texts = Vec::new();
        let mut omb = 0;
        for r in self.reps(pid, n) {
            let c = Composite::new(r, &self.d);
            let Some(code) = c
                .get(1)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
            else {
                continue;
            };
            let display = c
                .get(2)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty());
            let found = lookup(&code, c.get(3).as_deref());
            // the code system's name for a known code, else the message's
            let shown = found.as_ref().and_then(|f| f.3).map(str::to_owned);
            texts.push(shown.or(display.clone()).unwrap_or_else(|| code.clone()));
            let Some((slot, system, code, known)) = found else {
                continue;
            };
            if slot == tables::CategorySlot::Omb {
                if omb == most_omb {
                    continue;
                }
                omb += 1;
            }
            let mut coding = json!({ "system": system, "code": code });
            if let Some(d) = known.map(str::to_owned).or(display) {
                coding["display"] = json!(d);
            }
            parts.push(json!({ "url": slot.url(), "valueCoding": coding }));
        }
        if texts.is_empty() {
            return None;
        }
        // US Core lists the codes first, then the text
        parts.sort_by_key(|p| p["url"] != "ombCategory");
        parts.push(json!({ "url": "text", "valueString": texts.join("+") }));
        Some(json!({ "url": url, "extension": parts }))
    }

    fn encounter(
        &mut self,
        pv1: &Segment<'_>,
        patient: &Local,
        event: Option<&str>,
    ) -> Option<Local> {
        let mut identifiers = self.identifiers(pv1, 19);
        let mut visit = identifiers.first_mut()?.take();
        // the visit number is a VN whatever CX.5 says (guide: PV1-19 → identifier[1] type VN)
        visit["type"] = json!({ "coding": [{ "system": format!("{THO}v2-0203"), "code": "VN", "display": "Visit number" }] });
        let system = visit.get("system")?.as_str()?.to_owned();
        let value = visit.get("value")?.as_str()?.to_owned();
        identifiers[0] = visit;
        identifiers.extend(self.identifiers(pv1, 50));
        let class_code = self.text(pv1, 2, 1);
        let class = match class_code.as_deref().and_then(tables::encounter_class) {
            Some((system, code, display)) => {
                json!({ "system": system, "code": code, "display": display })
            }
            None => match &class_code {
                Some(code) => json!({ "system": format!("{THO}v2-0004"), "code": code }),
                None => {
                    json!({ "system": format!("{THO}v3-NullFlavor"), "code": "UNK", "display": "unknown" })
                }
            },
        };
        let end = self.datetime(pv1, 45);
        // the event first (A03 → finished, ...), then a discharge time, then the class
        let status = event
            .and_then(|e| {
                if e == "A08" {
                    None
                } else {
                    tables::encounter_status_from_event(e)
                }
            })
            .or_else(|| end.as_ref().map(|_| "finished"))
            .or_else(|| {
                class_code
                    .as_deref()
                    .and_then(tables::encounter_status_from_class)
            })
            .unwrap_or("unknown");
        let mut e = resource("Encounter");
        e.insert("identifier".into(), Value::Array(identifiers));
        e.insert("status".into(), json!(status));
        e.insert("class".into(), class);
        if let Some(t) = self.codeable(pv1, 4) {
            e.insert("type".into(), json!([t]));
        }
        if let Some(t) = self.codeable(pv1, 10) {
            e.insert("serviceType".into(), t);
        }
        e.insert("subject".into(), patient.reference());
        let mut participants = Vec::new();
        for (field, code) in [(7, "ATND"), (8, "REF"), (9, "CON"), (17, "ADM")] {
            for r in self.reps(pv1, field) {
                if let Some(individual) = self.practitioner_reference(r) {
                    participants.push(json!({
                        "type": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": code }] }],
                        "individual": individual,
                    }));
                }
            }
        }
        if !participants.is_empty() {
            e.insert("participant".into(), Value::Array(participants));
        }
        let mut period = Map::new();
        if let Some(start) = self.datetime(pv1, 44) {
            period.insert("start".into(), start);
        }
        if let Some(end) = end {
            period.insert("end".into(), end);
        }
        if !period.is_empty() {
            e.insert("period".into(), Value::Object(period));
        }
        if let Some(location) = self.raw(pv1, 3).and_then(|r| self.location_display(r)) {
            e.insert(
                "location".into(),
                json!([{ "location": { "display": location } }]),
            );
        }
        if let Some(disposition) = self.codeable(pv1, 36) {
            e.insert(
                "hospitalization".into(),
                json!({ "dischargeDisposition": disposition }),
            );
        }
        Some(self.push("Encounter", system, value, Value::Object(e)))
    }

    /// An XCN as a logical reference: its identifier and name, no resource.
    fn practitioner_reference(&self, raw: &str) -> Option<Value> {
        let c = Composite::new(raw, &self.d);
        let mut reference = Map::new();
        let family = c.sub(2, 1);
        let given = c.get(3);
        let display = match (given, family) {
            (Some(g), Some(f)) => Some(format!("{g} {f}")),
            (None, Some(f)) => Some(f),
            (Some(g), None) => Some(g),
            (None, None) => None,
        };
        if let Some(id) = c.get(1) {
            reference.insert("identifier".into(), self.scoped_identifier(id, &c, 9));
        }
        if let Some(d) = display {
            reference.insert("display".into(), json!(d));
        }
        (!reference.is_empty()).then_some(Value::Object(reference))
    }

    /// PD1-3 (XON) and PD1-4 (XCN) → the Patient's generalPractitioner, as
    /// logical references (identifier + display, with their type): like
    /// the other practitioners of the map, they are not written as
    /// resources of their own.
    fn primary_care(&mut self, pd1: &Segment<'_>, patient: &Local) {
        let mut carers = Vec::new();
        for r in self.reps(pd1, 3) {
            if let Some(mut org) = self.organization_reference(r) {
                org["type"] = json!("Organization");
                carers.push(org);
            }
        }
        for r in self.reps(pd1, 4) {
            if let Some(mut who) = self.practitioner_reference(r) {
                who["type"] = json!("Practitioner");
                carers.push(who);
            }
        }
        if carers.is_empty() {
            return;
        }
        let at = self.seen[&("Patient", patient.system.clone(), patient.value.clone())];
        if let Some(obj) = self.out[at].resource.as_object_mut() {
            obj.insert("generalPractitioner".into(), Value::Array(carers));
        }
    }

    /// XON → a logical Reference: the organization identifier (XON.10,
    /// else the older XON.3) under its authority (XON.6), and the name
    /// (XON.1) as display.
    fn organization_reference(&self, raw: &str) -> Option<Value> {
        let c = Composite::new(raw, &self.d);
        let mut reference = Map::new();
        if let Some(id) = c.get(10).or_else(|| c.get(3)) {
            reference.insert("identifier".into(), self.scoped_identifier(id, &c, 6));
        }
        if let Some(name) = c.get(1) {
            reference.insert("display".into(), json!(name));
        }
        (!reference.is_empty()).then_some(Value::Object(reference))
    }

    /// An Identifier of `value` whose system comes from the HD in
    /// component `hd` of `c` (through the authorities table), if any.
    fn scoped_identifier(&self, value: String, c: &Composite<'_>, hd: usize) -> Value {
        let mut identifier = json!({ "value": value });
        if let Some(system) = self.o.authorities.system(
            c.sub(hd, 1).as_deref(),
            c.sub(hd, 2).as_deref(),
            c.sub(hd, 3).as_deref(),
        ) {
            identifier["system"] = json!(system);
        }
        identifier
    }

    /// PL: point of care, room, bed, facility, building, floor as one text.
    fn location_display(&self, raw: &str) -> Option<String> {
        let c = Composite::new(raw, &self.d);
        let parts: Vec<String> = [1, 2, 3, 4, 7, 8]
            .iter()
            .filter_map(|&i| if i == 4 { c.sub(4, 1) } else { c.get(i) })
            .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    }

    fn related_person(&mut self, nk1: &Segment<'_>, patient: &Local, position: usize) {
        let names = self.list(nk1, 2, fhir::human_name);
        let relationship = self.codeable(nk1, 3);
        if names.is_empty() && relationship.is_none() {
            return;
        }
        let set_id = self.text(nk1, 1, 1).unwrap_or_else(|| position.to_string());
        let (system, value) = Self::derived(patient, &format!("NK1-{set_id}"));
        let mut r = resource("RelatedPerson");
        r.insert(
            "identifier".into(),
            json!([{ "system": system, "value": value }]),
        );
        r.insert("active".into(), json!(true));
        r.insert("patient".into(), patient.reference());
        let mut relationships = Vec::new();
        if let Some(mut rel) = relationship {
            let code = self.text(nk1, 3, 1);
            if let Some((sys, mapped)) = code.as_deref().and_then(tables::relationship) {
                // keep the v2 original beside the mapped code (guide advice)
                let mut codings = vec![json!({ "system": sys, "code": mapped })];
                if let Some(original) = rel.get("coding").and_then(Value::as_array) {
                    codings.extend(original.iter().cloned());
                }
                rel["coding"] = Value::Array(codings);
            }
            relationships.push(rel);
        }
        if let Some(role) = self.text(nk1, 7, 1) {
            relationships
                .push(json!({ "coding": [{ "system": format!("{THO}v2-0131"), "code": role }] }));
        }
        if !relationships.is_empty() {
            r.insert("relationship".into(), Value::Array(relationships));
        }
        if !names.is_empty() {
            r.insert("name".into(), Value::Array(names));
        }
        let mut telecom = self.list(nk1, 5, |x, d| fhir::contact_point(x, d, Some("home")));
        telecom.extend(self.list(nk1, 6, |x, d| fhir::contact_point(x, d, Some("work"))));
        if !telecom.is_empty() {
            r.insert("telecom".into(), Value::Array(telecom));
        }
        if let Some(g) = self.text(nk1, 15, 1).and_then(|c| tables::gender(&c)) {
            r.insert("gender".into(), json!(g));
        }
        if let Some(b) = self.date(nk1, 16) {
            r.insert("birthDate".into(), b);
        }
        let addresses = self.list(nk1, 4, fhir::address);
        if !addresses.is_empty() {
            r.insert("address".into(), Value::Array(addresses));
        }
        let mut period = Map::new();
        if let Some(s) = self.date(nk1, 8) {
            period.insert("start".into(), s);
        }
        if let Some(e) = self.date(nk1, 9) {
            period.insert("end".into(), e);
        }
        if !period.is_empty() {
            r.insert("period".into(), Value::Object(period));
        }
        self.push("RelatedPerson", system, value, Value::Object(r));
    }

    fn allergy(&mut self, al1: &Segment<'_>, patient: &Local, position: usize) {
        let code = self.codeable(al1, 3);
        let key = self
            .text(al1, 3, 1)
            .or_else(|| self.text(al1, 3, 2))
            .or_else(|| self.text(al1, 1, 1))
            .unwrap_or_else(|| position.to_string());
        let (system, value) = Self::derived(patient, &format!("AL1-{key}"));
        let mut a = resource("AllergyIntolerance");
        a.insert(
            "identifier".into(),
            json!([{ "system": system, "value": value }]),
        );
        a.insert(
            "clinicalStatus".into(),
            json!({ "coding": [{ "system": format!("{THO}allergyintolerance-clinical"), "code": "active" }] }),
        );
        if let Some(kind) = self.text(al1, 2, 1) {
            if let Some(category) = tables::allergy_category(&kind) {
                a.insert("category".into(), json!([category]));
            }
            if kind != "MC" {
                a.insert("type".into(), json!("allergy"));
            }
        }
        if let Some(c) = self
            .text(al1, 4, 1)
            .and_then(|s| tables::allergy_criticality(&s))
        {
            a.insert("criticality".into(), json!(c));
        }
        if let Some(c) = code {
            a.insert("code".into(), c);
        }
        a.insert("patient".into(), patient.reference());
        if let Some(onset) = self.date(al1, 6) {
            a.insert("onsetDateTime".into(), onset);
        }
        let manifestations: Vec<Value> = self
            .reps(al1, 5)
            .into_iter()
            .filter_map(|r| Composite::new(r, &self.d).get(1))
            .map(|t| json!({ "text": t }))
            .collect();
        if !manifestations.is_empty() {
            let mut reaction = json!({ "manifestation": manifestations });
            if let Some(sev) = self
                .text(al1, 4, 1)
                .and_then(|s| tables::reaction_severity(&s))
            {
                reaction["severity"] = json!(sev);
            }
            a.insert("reaction".into(), json!([reaction]));
        }
        self.push("AllergyIntolerance", system, value, Value::Object(a));
    }

    /// DG1 → Condition; returns its Encounter.diagnosis entry.
    fn condition(
        &mut self,
        dg1: &Segment<'_>,
        patient: &Local,
        encounter: Option<&Local>,
        position: usize,
    ) -> Option<Value> {
        let code = self
            .codeable(dg1, 3)
            .or_else(|| self.text(dg1, 4, 1).map(|t| json!({ "text": t })));
        let (system, value) = match self.entity_id(dg1, 20) {
            Some((_, s, v)) => (s, v),
            None => {
                let key = self
                    .text(dg1, 3, 1)
                    .or_else(|| self.text(dg1, 1, 1))
                    .unwrap_or_else(|| position.to_string());
                Self::derived(encounter.unwrap_or(patient), &format!("DG1-{key}"))
            }
        };
        let mut c = resource("Condition");
        c.insert(
            "identifier".into(),
            json!([{ "system": system, "value": value }]),
        );
        if self.text(dg1, 21, 1).as_deref() == Some("D") {
            c.insert(
                "verificationStatus".into(),
                json!({ "coding": [{ "system": format!("{THO}condition-ver-status"), "code": "entered-in-error" }] }),
            );
        }
        if encounter.is_some() {
            c.insert(
                "category".into(),
                json!([{ "coding": [{ "system": format!("{THO}condition-category"), "code": "encounter-diagnosis", "display": "Encounter Diagnosis" }] }]),
            );
        }
        if let Some(code) = code {
            c.insert("code".into(), code);
        }
        c.insert("subject".into(), patient.reference());
        if let Some(e) = encounter {
            c.insert("encounter".into(), e.reference());
        }
        if let Some(onset) = self.datetime(dg1, 5) {
            c.insert("onsetDateTime".into(), onset);
        }
        if let Some(recorded) = self.datetime(dg1, 19) {
            c.insert("recordedDate".into(), recorded);
        }
        let local = self.push("Condition", system, value, Value::Object(c));
        encounter?;
        let mut diagnosis = json!({ "condition": local.reference() });
        if let Some(role) = self
            .text(dg1, 6, 1)
            .and_then(|r| tables::diagnosis_role(&r))
        {
            diagnosis["use"] = json!({ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/diagnosis-role", "code": role }] });
        }
        if let Some(rank) = self
            .text(dg1, 15, 1)
            .and_then(|r| r.parse::<u32>().ok())
            .filter(|r| *r > 0)
        {
            diagnosis["rank"] = json!(rank);
        }
        Some(diagnosis)
    }

    fn report(
        &mut self,
        obr: &Segment<'_>,
        orc: Option<&Segment<'_>>,
        patient: &Local,
        encounter: Option<&Local>,
    ) -> Result<Local, MapFailure> {
        let placer = self
            .entity_id(obr, 2)
            .or_else(|| orc.and_then(|o| self.entity_id(o, 2)));
        let filler = self
            .entity_id(obr, 3)
            .or_else(|| orc.and_then(|o| self.entity_id(o, 3)));
        let typed = |id: &(Value, String, String), code: &str| {
            let mut v = id.0.clone();
            v["type"] = json!({ "coding": [{ "system": format!("{THO}v2-0203"), "code": code }] });
            v
        };
        let mut identifiers = Vec::new();
        if let Some(p) = &placer {
            identifiers.push(typed(p, "PLAC"));
        }
        if let Some(f) = &filler {
            identifiers.push(typed(f, "FILL"));
        }
        // the identity: the order number in a system of its own kind, so
        // that it names this report alone (another report may carry the
        // same number as its placer, or under a default authority)
        let order = match (&filler, &placer) {
            (Some((_, s, v)), _) => Some((order_system(s, "FILL"), v.clone())),
            (None, Some((_, s, v))) => Some((order_system(s, "PLAC"), v.clone())),
            (None, None) => None,
        };
        let (system, value) = match order {
            Some((s, v))
                if self
                    .seen
                    .contains_key(&("DiagnosticReport", s.clone(), v.clone())) =>
            {
                // several OBRs of one message share the order number: each
                // is its own report, told apart by its set id (else its
                // place), on an identifier derived from the order number
                let set = self.text(obr, 1, 1).unwrap_or_default();
                let mut value = format!("{v}-OBR-{set}");
                let mut n = 1;
                while self
                    .seen
                    .contains_key(&("DiagnosticReport", s.clone(), value.clone()))
                {
                    n += 1;
                    value = format!("{v}-OBR-{set}-{n}");
                }
                identifiers.insert(0, json!({ "system": s, "value": value }));
                (s.clone(), value)
            }
            Some((s, v)) => {
                identifiers.insert(0, json!({ "system": s, "value": v }));
                (s, v)
            }
            None => {
                // no order number: the message and the OBR's place in it
                let set = self.text(obr, 1, 1).unwrap_or_default();
                let system = self
                    .facility_system
                    .clone()
                    .unwrap_or_else(|| patient.system.clone());
                let value = format!("{}-OBR-{set}", self.control_id());
                identifiers.push(json!({ "system": system, "value": value }));
                (system, value)
            }
        };
        let mut r = resource("DiagnosticReport");
        r.insert("identifier".into(), Value::Array(identifiers));
        let status = self
            .text(obr, 25, 1)
            .and_then(|s| tables::report_status(&s))
            .unwrap_or("unknown");
        r.insert("status".into(), json!(status));
        if let Some(section) = self.text(obr, 24, 1) {
            r.insert(
                "category".into(),
                json!([{ "coding": [{ "system": format!("{THO}v2-0074"), "code": section }] }]),
            );
        }
        let code = self
            .codeable(obr, 4)
            .ok_or_else(|| MapFailure("OBR-4 (the service the report is about) is empty; DiagnosticReport.code is required".into()))?;
        r.insert("code".into(), code);
        r.insert("subject".into(), patient.reference());
        if let Some(e) = encounter {
            r.insert("encounter".into(), e.reference());
        }
        match (self.datetime(obr, 7), self.datetime(obr, 8)) {
            (Some(start), Some(end)) => {
                r.insert(
                    "effectivePeriod".into(),
                    json!({ "start": start, "end": end }),
                );
            }
            (Some(at), None) => {
                r.insert("effectiveDateTime".into(), at);
            }
            _ => {}
        }
        if let Some(issued) = self.instant(obr, 22) {
            r.insert("issued".into(), issued);
        }
        Ok(self.push("DiagnosticReport", system, value, Value::Object(r)))
    }

    fn observation(
        &mut self,
        obx: &Segment<'_>,
        patient: &Local,
        encounter: Option<&Local>,
        parent: &Local,
        index: usize,
        part_of: Option<&Local>,
    ) -> Option<Local> {
        let code = self.codeable(obx, 3)?;
        let set_id = self.text(obx, 1, 1).unwrap_or_else(|| index.to_string());
        let sub_id = self.text(obx, 4, 1);
        let suffix = match &sub_id {
            Some(sub) => format!("OBX-{set_id}.{sub}"),
            None => format!("OBX-{set_id}"),
        };
        let (system, mut value) = Self::derived(parent, &suffix);
        if self
            .seen
            .contains_key(&("Observation", system.clone(), value.clone()))
        {
            // a set id used twice under one order: the position tells them apart
            value = format!("{value}-{index}");
        }
        let mut o = resource("Observation");
        o.insert(
            "identifier".into(),
            json!([{ "system": system, "value": value }]),
        );
        if let Some(p) = part_of {
            o.insert("partOf".into(), json!([p.reference()]));
        }
        let status_code = self.text(obx, 11, 1);
        let status = status_code
            .as_deref()
            .and_then(tables::observation_status)
            .unwrap_or("unknown");
        o.insert("status".into(), json!(status));
        o.insert("code".into(), code);
        o.insert("subject".into(), patient.reference());
        if let Some(e) = encounter {
            o.insert("encounter".into(), e.reference());
        }
        if let Some(at) = self.datetime(obx, 14) {
            o.insert("effectiveDateTime".into(), at);
        }
        let value_type = self.text(obx, 2, 1).unwrap_or_default();
        match self.observation_value(obx, &value_type) {
            Some((key, v)) => {
                o.insert(key.into(), v);
            }
            None if status_code.as_deref() == Some("N") => {
                o.insert(
                    "dataAbsentReason".into(),
                    json!({ "coding": [{ "system": format!("{THO}data-absent-reason"), "code": "not-asked" }] }),
                );
            }
            None => {}
        }
        let interpretation = self.list(obx, 8, |r, d| {
            let code = Composite::new(r, d).get(1)?;
            let (system, code) = tables::interpretation(code.trim())?;
            Some(json!({ "coding": [{ "system": system, "code": code }] }))
        });
        if !interpretation.is_empty() {
            o.insert("interpretation".into(), Value::Array(interpretation));
        }
        if let Some(range) = self.text(obx, 7, 1) {
            o.insert("referenceRange".into(), json!([{ "text": range }]));
        }
        if let Some(method) = self.codeable(obx, 17) {
            o.insert("method".into(), method);
        }
        Some(self.push("Observation", system, value, Value::Object(o)))
    }

    /// OBX-5 by OBX-2 (table 0125) → the value[x] element.
    fn observation_value(
        &self,
        obx: &Segment<'_>,
        value_type: &str,
    ) -> Option<(&'static str, Value)> {
        let reps = self.reps(obx, 5);
        let first = *reps.first()?;
        let unit = || {
            self.raw(obx, 6)
                .map(|r| fhir::quantity_unit(r, &self.d))
                .unwrap_or((None, None, None))
        };
        let with_unit = |mut q: Value| {
            let (u, system, code) = unit();
            if let Some(u) = u {
                q["unit"] = json!(u);
            }
            if let (Some(s), Some(c)) = (system, code) {
                q["system"] = json!(s);
                q["code"] = json!(c);
            }
            q
        };
        match value_type {
            "NM" => {
                let text = Composite::new(first, &self.d).get(1)?;
                match fhir::number(text.trim()) {
                    Some(n) => Some(("valueQuantity", with_unit(json!({ "value": n })))),
                    None => Some(("valueString", json!(text))),
                }
            }
            "SN" => {
                let (key, v) = fhir::structured_numeric(first, &self.d)?;
                if key == "valueQuantity" {
                    Some((key, with_unit(v)))
                } else {
                    Some((key, v))
                }
            }
            "CE" | "CWE" | "CNE" | "CF" | "IS" | "ID" => Some((
                "valueCodeableConcept",
                fhir::codeable_concept(first, &self.d)?,
            )),
            "DT" | "DTM" | "TS" => {
                let text = Composite::new(first, &self.d).get(1)?;
                let v = fhir::datetime(&text, &self.o.zone).ok().flatten()?;
                Some(("valueDateTime", json!(v)))
            }
            "TM" => {
                let text = Composite::new(first, &self.d).get(1)?;
                let v = fhir::time(&text).ok().flatten()?;
                Some(("valueTime", json!(v)))
            }
            "NR" => {
                let c = Composite::new(first, &self.d);
                let mut range = Map::new();
                if let Some(low) = c.get(1).and_then(|v| fhir::number(v.trim())) {
                    range.insert("low".into(), json!({ "value": low }));
                }
                if let Some(high) = c.get(2).and_then(|v| fhir::number(v.trim())) {
                    range.insert("high".into(), json!({ "value": high }));
                }
                (!range.is_empty()).then_some(("valueRange", Value::Object(range)))
            }
            "ED" | "RP" => None,
            _ => {
                // ST, TX, FT and anything unknown: the text, repetitions on lines
                let text: Vec<String> = reps
                    .iter()
                    .filter_map(|r| fhirlift_hl7v2::decode(r, &self.d))
                    .filter(|t| !t.trim().is_empty())
                    .collect();
                (!text.is_empty()).then(|| ("valueString", json!(text.join("\n"))))
            }
        }
    }

    /// NTE → a note on the resource before it.
    fn note(&mut self, nte: &Segment<'_>, on: &Local) {
        let text: Vec<String> = self
            .reps(nte, 3)
            .into_iter()
            .filter_map(|r| fhirlift_hl7v2::decode(r, &self.d))
            .collect();
        let text = text.join("\n");
        if text.trim().is_empty() {
            return;
        }
        let Some(&at) = self
            .seen
            .get(&(on.resource_type, on.system.clone(), on.value.clone()))
        else {
            return;
        };
        if let Some(obj) = self.out[at].resource.as_object_mut() {
            let notes = obj
                .entry("note")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(list) = notes.as_array_mut() {
                list.push(json!({ "text": text }));
            }
        }
    }

    fn immunization(
        &mut self,
        rxa: &Segment<'_>,
        orc: Option<&Segment<'_>>,
        rxr: Option<&Segment<'_>>,
        patient: &Local,
    ) -> Result<Local, MapFailure> {
        let vaccine = self.codeable(rxa, 5).ok_or_else(|| {
            MapFailure("RXA-5 (the vaccine) is empty; Immunization.vaccineCode is required".into())
        })?;
        let when = self
            .datetime(rxa, 3)
            .ok_or_else(|| MapFailure("RXA-3 (when the vaccine was given) is empty or not a date; Immunization.occurrence is required".into()))?;
        let placer = orc.and_then(|o| self.entity_id(o, 2));
        let filler = orc.and_then(|o| self.entity_id(o, 3));
        let mut identifiers = Vec::new();
        for (id, code) in [(&placer, "PLAC"), (&filler, "FILL")] {
            if let Some((v, _, _)) = id {
                let mut v = v.clone();
                v["type"] =
                    json!({ "coding": [{ "system": format!("{THO}v2-0203"), "code": code }] });
                identifiers.push(v);
            }
        }
        let order = match (&filler, &placer) {
            (Some((_, s, v)), _) => Some((order_system(s, "FILL"), v.clone())),
            (None, Some((_, s, v))) => Some((order_system(s, "PLAC"), v.clone())),
            (None, None) => None,
        };
        let (system, value) = match order {
            Some((s, v)) => {
                identifiers.insert(0, json!({ "system": s, "value": v }));
                (s, v)
            }
            None => {
                // no order number: the patient, the vaccine and the day
                let code = self.text(rxa, 5, 1).unwrap_or_default();
                let day = self.text(rxa, 3, 1).unwrap_or_default();
                let day: String = day.chars().take(8).collect();
                let (s, v) = Self::derived(patient, &format!("RXA-{code}-{day}"));
                identifiers.push(json!({ "system": s, "value": v }));
                (s, v)
            }
        };
        let mut i = resource("Immunization");
        i.insert("identifier".into(), Value::Array(identifiers));
        let refused = self.codeable(rxa, 18);
        let status = if self.text(rxa, 21, 1).as_deref() == Some("D") {
            "entered-in-error"
        } else if refused.is_some() {
            "not-done"
        } else {
            self.text(rxa, 20, 1)
                .and_then(|s| tables::immunization_status(&s))
                .unwrap_or("completed")
        };
        i.insert("status".into(), json!(status));
        if let Some(reason) = refused {
            i.insert("statusReason".into(), reason);
        }
        i.insert("vaccineCode".into(), vaccine);
        i.insert("patient".into(), patient.reference());
        i.insert("occurrenceDateTime".into(), when);
        if let Some(source) = self.text(rxa, 9, 1) {
            i.insert("primarySource".into(), json!(source == "00"));
            if source != "00"
                && let Some(origin) = self.codeable(rxa, 9)
            {
                i.insert("reportOrigin".into(), origin);
            }
        }
        if let Some(lot) = self.text(rxa, 15, 1) {
            i.insert("lotNumber".into(), json!(lot));
        }
        if let Some(exp) = self.date(rxa, 16) {
            i.insert("expirationDate".into(), exp);
        }
        if let Some(mvx) = self.raw(rxa, 17) {
            let c = Composite::new(mvx, &self.d);
            let mut m = Map::new();
            if let Some(code) = c.get(1) {
                m.insert(
                    "identifier".into(),
                    json!({ "system": "http://hl7.org/fhir/sid/mvx", "value": code }),
                );
            }
            if let Some(name) = c.get(2) {
                m.insert("display".into(), json!(name));
            }
            if !m.is_empty() {
                i.insert("manufacturer".into(), Value::Object(m));
            }
        }
        // 999 is the CDC guide's "amount unknown": no dose then
        if let Some(amount) = self
            .text(rxa, 6, 1)
            .filter(|a| a != "999")
            .and_then(|a| fhir::number(&a))
        {
            let mut dose = json!({ "value": amount });
            if let Some(raw) = self.raw(rxa, 7) {
                let (unit, system, code) = fhir::quantity_unit(raw, &self.d);
                if let Some(u) = unit {
                    dose["unit"] = json!(u);
                }
                if let (Some(s), Some(c)) = (system, code) {
                    dose["system"] = json!(s);
                    dose["code"] = json!(c);
                }
            }
            i.insert("doseQuantity".into(), dose);
        }
        if let Some(rxr) = rxr {
            if let Some(route) = self.codeable(rxr, 1) {
                i.insert("route".into(), route);
            }
            if let Some(site) = self.codeable(rxr, 2) {
                i.insert("site".into(), site);
            }
        }
        let performers: Vec<Value> = self
            .reps(rxa, 10)
            .into_iter()
            .filter_map(|r| self.practitioner_reference(r))
            .map(|actor| {
                json!({
                    "function": { "coding": [{ "system": format!("{THO}v2-0443"), "code": "AP", "display": "Administering Provider" }] },
                    "actor": actor,
                })
            })
            .collect();
        if !performers.is_empty() {
            i.insert("performer".into(), Value::Array(performers));
        }
        Ok(self.push("Immunization", system, value, Value::Object(i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patient_of(text: &str) -> Value {
        let message = Message::parse(text.as_bytes(), 0).expect("the test message parses");
        let MessageMap::Mapped(resources) = map_message(&message, &MapOptions::default()).unwrap()
        else {
            panic!("mapped");
        };
        resources
            .into_iter()
            .find(|r| r.resource_type == "Patient")
            .unwrap()
            .resource
    }

    /// Regression: OBRs of one ORU sharing an order number were one
    /// DiagnosticReport, and their OBX the same Observations (on real
    /// files 537 OBR became 195 reports and 3,912 OBX 3,116 results).
    #[test]
    fn three_obrs_sharing_an_order_number_are_three_reports_with_six_results() {
        let text = "MSH|^~\\&|LAB|FAC|||202401011200||ORU^R01|MSG9|P|2.5.1\r\
             PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
             OBR|1|PL77^LIS|FL77^LAB|CBC^Blood count^L\r\
             OBX|1|NM|HGB^Hemoglobin^L||13.5|g/dL\r\
             OBX|2|NM|WBC^Leukocytes^L||6.1|10*3/uL\r\
             OBR|2|PL77^LIS|FL77^LAB|BMP^Basic panel^L\r\
             OBX|1|NM|NA^Sodium^L||140|mmol/L\r\
             OBX|2|NM|K^Potassium^L||4.1|mmol/L\r\
             OBR|3|PL77^LIS|FL77^LAB|LIP^Lipids^L\r\
             OBX|1|NM|CHOL^Cholesterol^L||190|mg/dL\r\
             OBX|2|NM|TRIG^Triglycerides^L||120|mg/dL\r";
        let message = Message::parse(text.as_bytes(), 0).expect("the test message parses");
        let MessageMap::Mapped(resources) = map_message(&message, &MapOptions::default()).unwrap()
        else {
            panic!("mapped");
        };
        let of = |t: &str| -> Vec<&MappedResource> {
            resources.iter().filter(|r| r.resource_type == t).collect()
        };
        let reports = of("DiagnosticReport");
        let results = of("Observation");
        assert_eq!(reports.len(), 3);
        assert_eq!(results.len(), 6);
        let identities: std::collections::HashSet<_> = resources
            .iter()
            .map(|r| (r.resource_type, &r.identity))
            .collect();
        assert_eq!(identities.len(), resources.len(), "no identity twice");
        // each report keeps the order numbers as typed identifiers, and
        // lists its own two results
        for (report, code) in reports.iter().zip(["CBC", "BMP", "LIP"]) {
            assert_eq!(report.resource["code"]["coding"][0]["code"], code);
            let typed: Vec<&Value> = report.resource["identifier"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["type"].is_object())
                .collect();
            assert_eq!(typed.len(), 2, "{:?}", report.resource["identifier"]);
            assert_eq!(report.resource["result"].as_array().unwrap().len(), 2);
        }
        assert_eq!(reports[0].identity.1, "FL77");
        assert_eq!(reports[1].identity.1, "FL77-OBR-2");
        assert_eq!(reports[2].identity.1, "FL77-OBR-3");
    }

    #[test]
    fn pd1_names_the_general_practitioners_as_logical_references() {
        let patient = patient_of(
            "MSH|^~\\&|APP|FAC|||202401011200||ADT^A08|MSG1|P|2.5.1\r\
             PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
             PD1|||Clinic B^^^^^HOSP&1.2.3&ISO^^^^ORG77|1111111111^Smith^Ann^^^^^^NPI\r",
        );
        let carers = patient["generalPractitioner"].as_array().unwrap();
        assert_eq!(carers.len(), 2, "{carers:?}");
        assert_eq!(carers[0]["type"], "Organization");
        assert_eq!(carers[0]["display"], "Clinic B");
        assert_eq!(carers[0]["identifier"]["value"], "ORG77");
        assert_eq!(carers[0]["identifier"]["system"], "urn:oid:1.2.3");
        assert_eq!(carers[1]["type"], "Practitioner");
        assert_eq!(carers[1]["display"], "Ann Smith");
        assert_eq!(carers[1]["identifier"]["value"], "1111111111");
    }

    #[test]
    fn race_and_ethnicity_become_us_core_extensions_and_local_codes_stay_text() {
        let patient = patient_of(
            "MSH|^~\\&|APP|FAC|||202401011200||ADT^A08|MSG1|P|2.5.1\r\
             PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F||2106-3^WHITE^HL7000~2131-1^Other Race^CDCREC~W^Wheat||||||||||||H^Hispanic^HL70189\r",
        );
        let ext = |url: &str| {
            patient["extension"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["url"] == url)
                .cloned()
                .unwrap()
        };
        let race = ext(US_CORE_RACE);
        assert_eq!(race["extension"][0]["url"], "ombCategory");
        assert_eq!(race["extension"][0]["valueCoding"]["code"], "2106-3");
        assert_eq!(race["extension"][0]["valueCoding"]["display"], "White");
        assert_eq!(race["extension"][1]["url"], "detailed");
        assert_eq!(race["extension"][1]["valueCoding"]["code"], "2131-1");
        assert_eq!(race["extension"][2]["url"], "text");
        assert_eq!(
            race["extension"][2]["valueString"],
            "White+Other Race+Wheat"
        );
        assert_eq!(race["extension"].as_array().unwrap().len(), 3);
        let ethnicity = ext(US_CORE_ETHNICITY);
        assert_eq!(ethnicity["extension"][0]["valueCoding"]["code"], "2135-2");
        assert_eq!(
            ethnicity["extension"][1]["valueString"],
            "Hispanic or Latino"
        );
    }
}
