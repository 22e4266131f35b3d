//! Orders and specimens: ORC/OBR → ServiceRequest, SPM → Specimen; the
//! ORM^O01 and OML^O21 messages (the ORU's orders are written by `oru.rs`
//! with these same functions).

use fhirlift_hl7v2::Segment;
use fhirlift_hl7v2::fhir::{self, Composite};
use serde_json::{Value, json};

use super::*;

/// An order being filled in: its ServiceRequest and what later segments
/// add to it (specimens).
pub(super) struct Order {
    pub request: Local,
    pub specimens: Vec<Value>,
}

impl Mapper<'_, '_> {
    /// ORM^O01 and OML^O21: the Patient (and Encounter), per ORC with its
    /// OBR a ServiceRequest, NTE after the OBR as its notes, DG1 as its
    /// reasons, SPM as its specimens, OBX as Observations it names as its
    /// supporting information (NTE after an OBX its notes); IN1 (+IN2) a
    /// Coverage, as in ADT.
    pub(super) fn orders(&mut self, message_type: &str) -> Result<(), MapFailure> {
        let segments: Vec<Segment<'_>> = self.m.segments().collect();
        let mut patient: Option<Local> = None;
        let mut encounter: Option<Local> = None;
        let mut orc: Option<Segment<'_>> = None;
        let mut order: Option<Order> = None;
        let mut orders = 0;
        let mut obx_index = 0;
        let mut last_obs: Option<Local> = None;
        for (i, s) in segments.iter().enumerate() {
            match s.name() {
                "PID" => {
                    self.close_order(&mut order);
                    (last_obs, obx_index) = (None, 0);
                    patient = Some(self.patient(s)?);
                    encounter = None;
                }
                "PV1" => {
                    if let Some(p) = &patient {
                        encounter = self.encounter(s, p, None);
                    }
                }
                "ORC" => {
                    self.close_order(&mut order);
                    (last_obs, obx_index) = (None, 0);
                    orc = Some(*s);
                }
                "OBR" => {
                    self.close_order(&mut order);
                    (last_obs, obx_index) = (None, 0);
                    let p = patient.clone().ok_or_else(|| {
                        MapFailure(format!(
                            "{message_type}: an OBR comes before any PID{MISSING_HINT}"
                        ))
                    })?;
                    orders += 1;
                    order = self
                        .service_request(orc.as_ref(), s, &p, encounter.as_ref(), orders)
                        .map(|request| Order {
                            request,
                            specimens: Vec::new(),
                        });
                    orc = None;
                }
                "NTE" => {
                    if let Some(o) = &last_obs {
                        let o = o.clone();
                        self.note(s, &o);
                    } else if let Some(o) = &order {
                        let request = o.request.clone();
                        self.note(s, &request);
                    }
                }
                // an observation the order comes with (a question's answer,
                // a vital sign): its supporting information
                "OBX" => {
                    if let (Some(p), Some(o)) = (&patient, &order) {
                        obx_index += 1;
                        let (p, request) = (p.clone(), o.request.clone());
                        last_obs =
                            self.observation(s, &p, encounter.as_ref(), &request, obx_index, None);
                        if let Some(obs) = &last_obs {
                            self.append(&request, "supportingInfo", obs.reference());
                        }
                    }
                }
                "IN1" => {
                    if let Some(p) = patient.clone() {
                        let in2 = segments.get(i + 1).filter(|n| n.name() == "IN2");
                        self.coverage(s, in2, &p);
                    }
                }
                "DG1" => {
                    if let (Some(o), Some(reason)) = (&order, self.codeable(s, 3)) {
                        let request = o.request.clone();
                        self.append(&request, "reasonCode", reason);
                    }
                }
                "SPM" => {
                    if let (Some(p), Some(o)) = (&patient, &mut order) {
                        let parent = o.request.clone();
                        let specimen = self.specimen(s, p, &parent);
                        o.specimens.push(specimen.reference());
                    }
                }
                _ => {}
            }
        }
        self.close_order(&mut order);
        if patient.is_none() {
            return Err(MapFailure(format!(
                "{message_type} without a PID segment{MISSING_HINT}"
            )));
        }
        Ok(())
    }

    /// An order number as the value of a `resource_type` identity, unique
    /// in this message: several OBRs of one message may share the order
    /// number, and each is its own report or request, told apart by its
    /// set id (else its place) on a value derived from the number. Never
    /// one resource for two OBRs.
    pub(super) fn unique_order_value(
        &self,
        resource_type: &'static str,
        system: &str,
        number: String,
        obr: &Segment<'_>,
    ) -> String {
        let taken = |value: &String| {
            self.seen
                .contains_key(&(resource_type, system.to_owned(), value.clone()))
        };
        if !taken(&number) {
            return number;
        }
        let set = self.text(obr, 1, 1).unwrap_or_default();
        let mut value = format!("{number}-OBR-{set}");
        let mut n = 1;
        while taken(&value) {
            n += 1;
            value = format!("{number}-OBR-{set}-{n}");
        }
        value
    }

    /// Writes what the order gathered (its specimens) into its request.
    pub(super) fn close_order(&mut self, order: &mut Option<Order>) {
        if let Some(o) = order.take()
            && !o.specimens.is_empty()
        {
            for s in o.specimens {
                self.append(&o.request, "specimen", s);
            }
        }
    }

    /// Sets the element `key` of a resource of this message.
    pub(super) fn set_element(&mut self, on: &Local, key: &str, value: Value) {
        if let Some(&at) = self
            .seen
            .get(&(on.resource_type, on.system.clone(), on.value.clone()))
            && let Some(obj) = self.out[at].resource.as_object_mut()
        {
            obj.insert(key.into(), value);
        }
    }

    /// Appends `value` to the list `key` of a resource of this message.
    pub(super) fn append(&mut self, on: &Local, key: &str, value: Value) {
        let Some(&at) = self
            .seen
            .get(&(on.resource_type, on.system.clone(), on.value.clone()))
        else {
            return;
        };
        if let Some(obj) = self.out[at].resource.as_object_mut()
            && let Some(list) = obj
                .entry(key)
                .or_insert_with(|| Value::Array(Vec::new()))
                .as_array_mut()
            && !list.contains(&value)
        {
            list.push(value);
        }
    }

    /// ORC (when there is one) and OBR → ServiceRequest: the order
    /// numbers as typed identifiers (placer ORC-2 else OBR-2, filler ORC-3
    /// else OBR-3, group ORC-4), the identity on the placer number (else
    /// the filler's, else the message and the order's place in it), status
    /// from ORC-5 (table 0038) else ORC-1 (0119), intent from OBR-11, code
    /// OBR-4 (required: no OBR-4, no request), authoredOn ORC-9, requester
    /// ORC-12 else OBR-16 (a logical reference).
    pub(super) fn service_request(
        &mut self,
        orc: Option<&Segment<'_>>,
        obr: &Segment<'_>,
        patient: &Local,
        encounter: Option<&Local>,
        place: usize,
    ) -> Option<Local> {
        let code = self.codeable(obr, 4)?;
        // a number without an authority is kept as an identifier, never
        // an identity (it could name another facility's order)
        let from_either = |n: usize| {
            orc.and_then(|o| self.order_number(o, n))
                .or_else(|| self.order_number(obr, n))
        };
        let placer = from_either(2);
        let filler = from_either(3);
        let group = orc.and_then(|o| self.order_number(o, 4));
        // the alternate placer number (OBR-53, else ORC-33: a CX)
        let alternate = (self.identifiers(obr, 53).into_iter().next())
            .or_else(|| orc.and_then(|o| self.identifiers(o, 33).into_iter().next()));
        let mut identifiers = Vec::new();
        for (id, kind) in [
            (&placer, "PLAC"),
            (&filler, "FILL"),
            (&group, "PGN"),
            (&alternate, "PLAC"),
        ] {
            if let Some(id) = id {
                let mut v = id.clone();
                v["type"] =
                    json!({ "coding": [{ "system": format!("{THO}v2-0203"), "code": kind }] });
                identifiers.push(v);
            }
        }
        let scoped = |id: &Option<Value>| {
            let id = id.as_ref()?;
            Some((
                id.get("system")?.as_str()?.to_owned(),
                id.get("value")?.as_str()?.to_owned(),
            ))
        };
        let number = match (scoped(&placer), scoped(&filler)) {
            (Some((s, v)), _) => Some((order_system(&s, "PLAC"), v)),
            (None, Some((s, v))) => Some((order_system(&s, "FILL"), v)),
            (None, None) => None,
        };
        let (system, value) = match number {
            Some((system, v)) => {
                let value = self.unique_order_value("ServiceRequest", &system, v, obr);
                (system, value)
            }
            None => (
                self.facility_system
                    .clone()
                    .unwrap_or_else(|| patient.system.clone()),
                format!("{}-ORDER-{place}", self.control_id()),
            ),
        };
        identifiers.insert(0, json!({ "system": system, "value": value }));
        let mut r = resource("ServiceRequest");
        r.insert("identifier".into(), Value::Array(identifiers));
        let status = orc
            .and_then(|o| {
                self.text(o, 5, 1)
                    .map(|s| order_status(&s))
                    .or_else(|| self.text(o, 1, 1).map(|c| order_control_status(&c)))
            })
            .unwrap_or("active");
        r.insert("status".into(), json!(status));
        let intent = match self.text(obr, 11, 1).as_deref() {
            Some("G") => "reflex-order",
            _ => "order",
        };
        r.insert("intent".into(), json!(intent));
        r.insert("code".into(), code);
        r.insert("subject".into(), patient.reference());
        if let Some(e) = encounter {
            r.insert("encounter".into(), e.reference());
        }
        if let Some(at) = orc.and_then(|o| self.datetime(o, 9)) {
            r.insert("authoredOn".into(), at);
        }
        let requester = orc
            .and_then(|o| self.raw(o, 12))
            .or_else(|| self.raw(obr, 16))
            .and_then(|raw| self.practitioner_reference(raw));
        if let Some(who) = requester {
            r.insert("requester".into(), who);
        }
        Some(self.push("ServiceRequest", system, value, Value::Object(r)))
    }

    /// SPM → Specimen: identifier SPM-2 (the filler's, else the placer's
    /// EI of the EIP; without one, the parent's value + `-SPM-<set id>`),
    /// type SPM-4, collection time SPM-17 (a period when it has an end)
    /// and body site SPM-8, receivedTime SPM-18, subject the patient.
    pub(super) fn specimen(&mut self, spm: &Segment<'_>, patient: &Local, parent: &Local) -> Local {
        let eip = self.raw(spm, 2).map(|raw| Composite::new(raw, &self.d));
        let sub = self.d.subcomponent.unwrap_or('&');
        let ei = |part: usize| {
            let raw = eip.as_ref()?.raw(part)?;
            // an EIP's parts are EIs written as subcomponents
            let as_ei = raw.replace(sub, &self.d.component.to_string());
            let mut id = fhir::entity_identifier(&as_ei, &self.d, &self.o.authorities)?;
            self.default_system(&mut id);
            Some(id)
        };
        let found = ei(2).or_else(|| ei(1));
        let (identifier, system, value) = match found.as_ref().and_then(|id| {
            Some((
                id.clone(),
                id.get("system")?.as_str()?.to_owned(),
                id.get("value")?.as_str()?.to_owned(),
            ))
        }) {
            Some(found) => found,
            None => {
                let set = self.text(spm, 1, 1).unwrap_or_else(|| "1".into());
                let (system, value) = Self::derived(parent, &format!("SPM-{set}"));
                (json!({ "system": system, "value": value }), system, value)
            }
        };
        // the other part of the EIP, the accession id (SPM-31) and other
        // ids (SPM-32) are kept beside the identity
        let mut identifiers = vec![identifier];
        let others = [ei(1), ei(2)].into_iter().flatten();
        let more = self
            .identifiers(spm, 31)
            .into_iter()
            .chain(self.identifiers(spm, 32));
        for id in others.chain(more) {
            let held = identifiers
                .iter()
                .any(|h| h.get("value") == id.get("value") && h.get("system") == id.get("system"));
            if !held {
                identifiers.push(id);
            }
        }
        let mut r = resource("Specimen");
        r.insert("identifier".into(), Value::Array(identifiers));
        if let Some(mut t) = self.codeable(spm, 4) {
            // a bare code is table 0487's (the guide's SpecimenType map)
            let codings = t.get_mut("coding").and_then(Value::as_array_mut);
            for coding in codings.into_iter().flatten() {
                if coding.get("system").is_none()
                    && let Some(obj) = coding.as_object_mut()
                {
                    obj.insert("system".into(), json!(format!("{THO}v2-0487")));
                }
            }
            r.insert("type".into(), t);
        }
        r.insert("subject".into(), patient.reference());
        if let Some(received) = self.datetime(spm, 18) {
            r.insert("receivedTime".into(), received);
        }
        let mut collection = serde_json::Map::new();
        let times = self.raw(spm, 17).map(|raw| Composite::new(raw, &self.d));
        let at = |n: usize| {
            let text = times.as_ref()?.get(n)?;
            fhir::datetime(&text, &self.o.zone).ok().flatten()
        };
        match (at(1), at(2)) {
            (Some(start), Some(end)) => {
                collection.insert(
                    "collectedPeriod".into(),
                    json!({ "start": start, "end": end }),
                );
            }
            (Some(start), None) => {
                collection.insert("collectedDateTime".into(), json!(start));
            }
            _ => {}
        }
        if let Some(site) = self.codeable(spm, 8) {
            collection.insert("bodySite".into(), site);
        }
        if !collection.is_empty() {
            r.insert("collection".into(), Value::Object(collection));
        }
        if parent.resource_type == "ServiceRequest" {
            r.insert("request".into(), json!([parent.reference()]));
        }
        self.push("Specimen", system, value, Value::Object(r))
    }
}

/// Table 0038 (ORC-5, order status) → ServiceRequest.status.
fn order_status(code: &str) -> &'static str {
    match code.trim() {
        "A" | "IP" | "SC" => "active",
        "CM" => "completed",
        "CA" | "DC" | "RP" => "revoked",
        "ER" => "entered-in-error",
        "HD" => "on-hold",
        _ => "unknown",
    }
}

/// Table 0119 (ORC-1, order control) → ServiceRequest.status, when ORC-5
/// is empty.
fn order_control_status(code: &str) -> &'static str {
    match code.trim() {
        "NW" | "OK" | "SN" | "SC" | "XO" | "XX" | "RL" | "RO" | "RP" | "RR" | "RU" | "PA"
        | "CH" | "SS" => "active",
        "CA" | "OC" | "CR" | "DC" | "OD" | "DR" => "revoked",
        "HD" | "OH" | "HR" => "on-hold",
        "OE" | "OR" | "RE" => "completed",
        _ => "unknown",
    }
}
