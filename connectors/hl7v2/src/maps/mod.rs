//! The built-in v2-to-FHIR maps: one message in, its FHIR resources out.
//!
//! They follow the HL7 V2-to-FHIR implementation guide as laid out in the
//! mapping sheet (`HL7V2-TO-FHIR.md`); where the guide and Microsoft's
//! FHIR-Converter differ, the guide wins unless ARCHITECTURE.md says why not.
//!
//! - ADT (A01-A16, A25-A28, A31, A41): PID → Patient, PV1 → Encounter
//!   (not for A28/A31/A41, which are about the person), NK1 → RelatedPerson,
//!   AL1 → AllergyIntolerance, DG1 → Condition (and Encounter.diagnosis),
//!   PR1 → Procedure, IN1 (+IN2) → Coverage and its payor Organization,
//!   GT1 → a guarantor RelatedPerson, ROL → the visit's participants (after
//!   PV1) or the patient's CareTeam (before it), PV2 → the visit's details.
//! - ADT A40 (merge patient): the surviving Patient (PID) `replaces` the
//!   retired one (MRG), which is amended to `active: false`, `replaced-by`;
//!   A29 (delete person) amends the Patient to `active: false`, A23 (delete
//!   visit) the Encounter to `entered-in-error`: nothing is ever deleted.
//! - ORU^R01: per patient group a Patient (and Encounter); per OBR a
//!   ServiceRequest (the order) and a DiagnosticReport based on it; per OBX
//!   an Observation, with the NTEs after it as notes; NTEs after the OBR
//!   are the order's notes; per SPM a Specimen of the report and its order.
//! - ORM^O01, OML^O21: Patient (and Encounter), per ORC/OBR a
//!   ServiceRequest with its notes (NTE), reasons (DG1) and specimens (SPM).
//! - MDM^T01–T11: Patient (and Encounter) and a DocumentReference (TXA,
//!   the OBX text or ED as its content).
//! - SIU^S12–S17, S26: Patient and an Appointment (SCH; AIS, AIG, AIL,
//!   AIP as its service and participants).
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

mod adt;
mod care;
mod documents;
mod merges;
mod orders;
mod oru;
mod scheduling;
mod vxu;

use std::collections::HashMap;

/// The system of an identity taken from an order number: its authority's
/// system and its kind (`FILL`, `PLAC`), so that a conditional write on it
/// matches only resources identified by that kind of number.
fn order_system(authority: &str, kind: &str) -> String {
    format!("urn:fhirlift:hl7v2:{kind}:{authority}")
}

use fhirlift_core::group::derived_urn_uuid;
use fhirlift_hl7v2::fhir::{self, Authorities, Composite};
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
    "ServiceRequest",
    "Specimen",
    "DocumentReference",
    "Appointment",
    "Procedure",
    "Coverage",
    "Organization",
    "CareTeam",
];

/// MDM events: original (T01-T02), status change (T03-T04), addendum
/// (T05-T06), edit (T07-T08), replacement (T09-T10), cancel (T11).
const MDM_EVENTS: &[&str] = &[
    "T01", "T02", "T03", "T04", "T05", "T06", "T07", "T08", "T09", "T10", "T11",
];

/// ADT events with the A01 structure that the map covers.
const ADT_EVENTS: &[&str] = &[
    "A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A09", "A10", "A11", "A12", "A13",
    "A14", "A15", "A16", "A25", "A26", "A27", "A28", "A31", "A41", "A60",
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
    /// It amends the stored resource (a merge, a deletion) instead of
    /// replacing it: [`fhirlift_core::group::Operation::amends`].
    pub amends: bool,
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

/// What a map failure for a missing segment says to do.
const MISSING_HINT: &str = "; the resources of this message hang on that segment: fix the message at its source, or map it with emit: entries of your own";

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
        ("ADT", "A40") => m.merge()?,
        ("ADT", "A23") => m.visit_deleted()?,
        ("ADT", "A29") => m.person_deleted()?,
        ("ORU", "R01") => m.oru()?,
        ("VXU", "V04") => m.vxu()?,
        ("ORM", "O01") | ("OML", "O21") => m.orders(&message_type)?,
        ("MDM", e) if MDM_EVENTS.contains(&e) => m.document(e)?,
        ("SIU", e) if scheduling::SIU_EVENTS.contains(&e) => m.appointment(e)?,
        _ => return Ok(MessageMap::Unmapped { message_type }),
    }
    Ok(MessageMap::Mapped(m.finish()))
}

/// Every `code` string as FHIR's `code` type allows it: a message may
/// carry doubled or odd whitespace inside a code (`A  B`, from a table
/// field, a class, a role), which R4 refuses; one pass over what every
/// map wrote, rather than a rule at each of the places that read a code.
fn tidy_codes(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    Value::String(code) if key == "code" => {
                        if code.contains(char::is_whitespace) {
                            *code = fhir::code_text(code);
                        }
                    }
                    other => tidy_codes(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tidy_codes),
        _ => {}
    }
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

    fn finish(mut self) -> Vec<MappedResource> {
        for r in &mut self.out {
            tidy_codes(&mut r.resource);
        }
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

    /// An EI at field `n` → Identifier, with the facility's system when it
    /// names no authority, and without one when neither is known.
    fn order_number(&self, s: &Segment<'_>, n: usize) -> Option<Value> {
        let mut id = fhir::entity_identifier(self.raw(s, n)?, &self.d, &self.o.authorities)?;
        self.default_system(&mut id);
        id.get("value")?;
        Some(id)
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
            amends: false,
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

    /// Adds an amendment of the resource stored under the identity
    /// ([`MappedResource::amends`]).
    fn push_amendment(
        &mut self,
        resource_type: &'static str,
        system: String,
        value: String,
        resource: Value,
    ) -> Local {
        let local = self.push(resource_type, system.clone(), value.clone(), resource);
        let at = self.seen[&(resource_type, system, value)];
        self.out[at].amends = true;
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
}

#[cfg(test)]
mod tests;
