//! ADT (A01-A16, A25-A28, A31, A41) and the segments every family shares:
//! PID → Patient (PD1 → generalPractitioner), PV1 → Encounter, NK1 →
//! RelatedPerson, AL1 → AllergyIntolerance, DG1 → Condition; PR1 and
//! IN1/IN2 are in `care.rs`.

use fhirlift_hl7v2::Segment;
use fhirlift_hl7v2::fhir::{self, Composite, tables};
use serde_json::{Map, Value, json};

use super::*;

impl Mapper<'_, '_> {
    pub(super) fn adt(&mut self, event: &str) -> Result<(), MapFailure> {
        let pid = self
            .m
            .segment("PID")
            .ok_or_else(|| MapFailure(format!("ADT^{event} without a PID segment")))?;
        let patient = self.patient(&pid)?;
        let mut encounter = None;
        if !matches!(event, "A28" | "A31" | "A41" | "A60")
            && let Some(pv1) = self.m.segment("PV1")
        {
            encounter = self.encounter(&pv1, &patient, Some(event));
        }
        let segments: Vec<Segment<'_>> = self.m.segments().collect();
        let mut diagnoses = Vec::new();
        let mut last_obs: Option<Local> = None;
        let mut obx_index = 0;
        let mut in_visit = false;
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
                "AL1" => {
                    self.allergy(s, &patient, i, 6);
                }
                "IAM" => self.allergy_update(s, &patient, i),
                "DG1" => {
                    if let Some(d) = self.condition(s, &patient, encounter.as_ref(), i) {
                        diagnoses.push(d);
                    }
                }
                "PR1" => self.procedure(s, &patient, encounter.as_ref(), i),
                "PV1" => in_visit = true,
                // after PV1 the visit's people, before it the patient's
                "ROL" => match encounter.clone().filter(|_| in_visit) {
                    Some(enc) => self.encounter_role(s, &enc),
                    None => self.care_team_role(s, &patient),
                },
                "IN1" => {
                    let in2 = segments.get(i + 1).filter(|n| n.name() == "IN2");
                    self.coverage(s, in2, &patient);
                }
                "GT1" => self.guarantor(s, &patient, i),
                "PV2" => {
                    if let Some(enc) = encounter.clone() {
                        self.visit_details(s, &enc);
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

    /// PID → Patient: identity from PID-3 (PID-2 and PID-4 stand in), then
    /// the demographics, languages and US Core extensions, in that order.
    pub(super) fn patient(&mut self, pid: &Segment<'_>) -> Result<Local, MapFailure> {
        let (identifiers, identity) = self.patient_identifiers(pid)?;
        let mut p = resource("Patient");
        p.insert("identifier".into(), Value::Array(identifiers));
        self.demographics(pid, &mut p);
        let languages = self.languages(pid);
        if !languages.is_empty() {
            p.insert("communication".into(), Value::Array(languages));
        }
        let extensions = self.patient_extensions(pid);
        if !extensions.is_empty() {
            p.insert("extension".into(), Value::Array(extensions));
        }
        Ok(self.push("Patient", identity.0, identity.1, Value::Object(p)))
    }

    /// The Patient's identifiers (PID-2, -3, -4, SSN, driver's licence) and
    /// its identity: the first of them with a system and a value.
    pub(super) fn patient_identifiers(
        &self,
        pid: &Segment<'_>,
    ) -> Result<(Vec<Value>, (String, String)), MapFailure> {
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
        Ok((identifiers, identity))
    }

    /// Names, telecom, gender, birth, death, addresses, marital status and
    /// multiple birth, inserted in that order.
    fn demographics(&self, pid: &Segment<'_>, p: &mut Map<String, Value>) {
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
    }

    /// PID-15 as `communication` entries (BCP 47 codes where the table
    /// knows the language).
    fn languages(&self, pid: &Segment<'_>) -> Vec<Value> {
        self.reps(pid, 15)
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
            .collect()
    }

    /// Mother's maiden name (PID-6), race (PID-10), ethnicity (PID-22).
    fn patient_extensions(&self, pid: &Segment<'_>) -> Vec<Value> {
        let mut extensions = Vec::new();
        if let Some(maiden) = self.text(pid, 6, 1) {
            extensions.push(json!({
                "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                "valueString": maiden,
            }));
        }
        extensions.extend(self.us_core_category(pid, 10, US_CORE_RACE, 6, tables::race));
        extensions.extend(self.us_core_category(pid, 22, US_CORE_ETHNICITY, 1, tables::ethnicity));
        extensions
    }

    /// PID-10 race or PID-22 ethnicity as a US Core extension: each
    /// repetition's code in `ombCategory` (at most `most_omb`; further ones
    /// stay in the text) or `detailed`, and `text` (required) = the code
    /// system's displays for known codes, else the message's displays, or
    /// codes, joined with `+` (as FHIR-Converter writes it). A local code
    /// is kept in the text only.
    pub(super) fn us_core_category(
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

    pub(super) fn encounter(
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
            .and_then(|e| match e {
                "A08" => None,
                // the guide has no row: a cancelled pending discharge or
                // transfer leaves the patient in, a cancelled pending
                // admission never happened (MAPPING.md)
                "A25" | "A26" => Some("in-progress"),
                "A27" => Some("cancelled"),
                _ => tables::encounter_status_from_event(e),
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
    pub(super) fn practitioner_reference(&self, raw: &str) -> Option<Value> {
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
    pub(super) fn primary_care(&mut self, pd1: &Segment<'_>, patient: &Local) {
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
    pub(super) fn organization_reference(&self, raw: &str) -> Option<Value> {
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
    pub(super) fn scoped_identifier(&self, value: String, c: &Composite<'_>, hd: usize) -> Value {
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
    pub(super) fn location_display(&self, raw: &str) -> Option<String> {
        let c = Composite::new(raw, &self.d);
        let parts: Vec<String> = [1, 2, 3, 4, 7, 8]
            .iter()
            .filter_map(|&i| if i == 4 { c.sub(4, 1) } else { c.get(i) })
            .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    }

    pub(super) fn related_person(&mut self, nk1: &Segment<'_>, patient: &Local, position: usize) {
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
        if relationship.is_some() {
            relationships.extend(self.relationship(nk1, 3));
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

    /// A relationship (table 0063) at field `n` → CodeableConcept: the
    /// v3 RoleCode the table maps it to, the v2 original beside it (guide
    /// advice).
    pub(super) fn relationship(&self, s: &Segment<'_>, n: usize) -> Option<Value> {
        let mut rel = self.codeable(s, n)?;
        let code = self.text(s, n, 1);
        if let Some((sys, mapped)) = code.as_deref().and_then(tables::relationship) {
            let mut codings = vec![json!({ "system": sys, "code": mapped })];
            if let Some(original) = rel.get("coding").and_then(Value::as_array) {
                codings.extend(original.iter().cloned());
            }
            rel["coding"] = Value::Array(codings);
        }
        Some(rel)
    }

    /// AL1 (or IAM: the same fields 2-5, onset at `onset`) →
    /// AllergyIntolerance, on the patient + allergen code.
    pub(super) fn allergy(
        &mut self,
        al1: &Segment<'_>,
        patient: &Local,
        position: usize,
        onset: usize,
    ) -> Local {
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
        if let Some(onset) = self.date(al1, onset) {
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
        self.push("AllergyIntolerance", system, value, Value::Object(a))
    }

    /// DG1 → Condition; returns its Encounter.diagnosis entry.
    pub(super) fn condition(
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
}
