//! The rest of a patient's record in ADT messages: PR1 → Procedure, ROL
//! → the visit's participants, IN1 (with IN2) → Coverage with its payor
//! Organization, GT1 → a guarantor RelatedPerson, PV2 → the visit's
//! reason, length and priority.

use fhirlift_hl7v2::Segment;
use fhirlift_hl7v2::fhir::{self, Composite, tables};
use serde_json::{Value, json};

use super::*;

impl Mapper<'_, '_> {
    /// PR1 → Procedure: code PR1-3, performed PR1-5, performers PR1-12
    /// (else PR1-11), identity PR1-19 (else the visit's or patient's value
    /// with `-PR1-<code>` and the day when there is one). A procedure in
    /// an ADT message has happened: status `completed`.
    pub(super) fn procedure(
        &mut self,
        pr1: &Segment<'_>,
        patient: &Local,
        encounter: Option<&Local>,
        position: usize,
    ) {
        // PR1-4 (the description) is the code's text unless PR1-3.9 gives one
        let description = self.text(pr1, 4, 1);
        let code = match (self.codeable(pr1, 3), description) {
            (Some(mut code), Some(text)) => {
                if code.get("text").is_none() {
                    code["text"] = json!(text);
                }
                code
            }
            (Some(code), None) => code,
            (None, Some(text)) => json!({ "text": text }),
            // Procedure.code is what the procedure is: none, nothing to say
            (None, None) => return,
        };
        let (system, value) = match self.entity_id(pr1, 19) {
            Some((_, s, v)) => (s, v),
            None => {
                let key = self.text(pr1, 3, 1).unwrap_or_else(|| position.to_string());
                let day = self
                    .text(pr1, 5, 1)
                    .map(|d| d.chars().take(8).collect::<String>());
                let suffix = match day {
                    Some(day) => format!("PR1-{key}-{day}"),
                    None => format!("PR1-{key}"),
                };
                Self::derived(encounter.unwrap_or(patient), &suffix)
            }
        };
        let mut p = resource("Procedure");
        p.insert(
            "identifier".into(),
            json!([{ "system": system, "value": value }]),
        );
        p.insert("status".into(), json!("completed"));
        p.insert("code".into(), code);
        p.insert("subject".into(), patient.reference());
        if let Some(e) = encounter {
            p.insert("encounter".into(), e.reference());
        }
        if let Some(at) = self.datetime(pr1, 5) {
            p.insert("performedDateTime".into(), at);
        }
        let performers: Vec<Value> = [12, 11]
            .into_iter()
            .flat_map(|n| self.reps(pr1, n))
            .filter_map(|raw| self.practitioner_reference(raw))
            .map(|actor| json!({ "actor": actor }))
            .collect();
        if !performers.is_empty() {
            p.insert("performer".into(), Value::Array(performers));
        }
        self.push("Procedure", system, value, Value::Object(p));
    }

    /// ROL (in a visit) → a participant of the Encounter: type ROL-3,
    /// individual ROL-4 (a logical reference), period ROL-5/ROL-6.
    pub(super) fn encounter_role(&mut self, rol: &Segment<'_>, encounter: &Local) {
        if let Some(participant) = self.role_participant(rol, "type", "individual") {
            self.append(encounter, "participant", participant);
        }
    }

    /// ROL outside a visit (after PID, PD1) → the patient's CareTeam (one
    /// per patient: the patient's value + `-CareTeam`), each person a
    /// participant with their role (ROL-3), as the guide's ROL map says.
    pub(super) fn care_team_role(&mut self, rol: &Segment<'_>, patient: &Local) {
        let Some(participant) = self.role_participant(rol, "role", "member") else {
            return;
        };
        let (system, value) = Self::derived(patient, "CareTeam");
        let key = ("CareTeam", system.clone(), value.clone());
        let team = match self.seen.get(&key) {
            Some(&at) => self.out[at].full_url.clone(),
            None => {
                let mut t = resource("CareTeam");
                t.insert(
                    "identifier".into(),
                    json!([{ "system": system, "value": value }]),
                );
                t.insert("status".into(), json!("active"));
                t.insert("subject".into(), patient.reference());
                self.push("CareTeam", system.clone(), value.clone(), Value::Object(t))
                    .full_url
            }
        };
        let local = Local {
            resource_type: "CareTeam",
            full_url: team,
            system,
            value,
        };
        self.append(&local, "participant", participant);
    }

    /// A ROL's person (ROL-4, a logical reference), role (ROL-3) and
    /// period (ROL-5/-6), under the element names of its target.
    fn role_participant(
        &self,
        rol: &Segment<'_>,
        role_key: &str,
        person_key: &str,
    ) -> Option<Value> {
        let person = self
            .raw(rol, 4)
            .and_then(|raw| self.practitioner_reference(raw))?;
        let mut participant = serde_json::Map::new();
        if let Some(role) = self.codeable(rol, 3) {
            participant.insert(role_key.into(), json!([role]));
        }
        let mut period = serde_json::Map::new();
        for (n, key) in [(5, "start"), (6, "end")] {
            if let Some(at) = self.datetime(rol, n) {
                period.insert(key.into(), at);
            }
        }
        if !period.is_empty() {
            participant.insert("period".into(), Value::Object(period));
        }
        participant.insert(person_key.into(), person);
        Some(Value::Object(participant))
    }

    /// IAM (ADT^A60) → the AllergyIntolerance AL1 would write for the same
    /// allergen (the same identity: an update of it), onset IAM-11, IAM-7
    /// kept as an identifier; action D (delete) → verificationStatus
    /// `entered-in-error` (and no clinicalStatus, as R4 requires).
    pub(super) fn allergy_update(&mut self, iam: &Segment<'_>, patient: &Local, position: usize) {
        let allergy = self.allergy(iam, patient, position, 11);
        let unique = self.entity_id(iam, 7).map(|(id, _, _)| id);
        let deleted = self.text(iam, 6, 1).as_deref() == Some("D");
        let Some(&at) = self.seen.get(&(
            allergy.resource_type,
            allergy.system.clone(),
            allergy.value.clone(),
        )) else {
            return;
        };
        let Some(obj) = self.out[at].resource.as_object_mut() else {
            return;
        };
        if let Some(id) = unique
            && let Some(list) = obj.get_mut("identifier").and_then(Value::as_array_mut)
        {
            list.push(id);
        }
        if deleted {
            obj.remove("clinicalStatus");
            obj.insert(
                "verificationStatus".into(),
                json!({ "coding": [{ "system": format!("{THO}allergyintolerance-verification"), "code": "entered-in-error" }] }),
            );
        }
    }

    /// IN1 (+ the IN2 after it) → Coverage, paid by an Organization for
    /// IN1-3/IN1-4. Identity: the payor's company id with the policy number
    /// IN1-36 (else the member id IN2-61 or the insured's id IN1-49, else
    /// the patient's value + `-IN1-<set id>`), in a system of the payor:
    /// one policy of one payor is one Coverage, whichever message says it.
    pub(super) fn coverage(
        &mut self,
        in1: &Segment<'_>,
        in2: Option<&Segment<'_>>,
        patient: &Local,
    ) {
        let set = self.text(in1, 1, 1).unwrap_or_else(|| "1".into());
        let payor = self.payor(in1);
        let payor_key = payor
            .as_ref()
            .map(|(_, key)| key.clone())
            .unwrap_or_else(|| "unknown-payor".into());
        let member = in2
            .and_then(|s| self.text(s, 61, 1))
            .or_else(|| self.text(in1, 49, 1));
        let (system, value) = match self.text(in1, 36, 1).or_else(|| member.clone()) {
            Some(number) => (format!("urn:fhirlift:hl7v2:coverage:{payor_key}"), number),
            None => Self::derived(patient, &format!("IN1-{set}")),
        };
        let mut c = resource("Coverage");
        c.insert(
            "identifier".into(),
            json!([{ "system": system, "value": value }]),
        );
        c.insert("status".into(), json!("active"));
        if let Some(kind) = self.codeable(in1, 15) {
            c.insert("type".into(), kind);
        }
        let relationship = self.text(in1, 17, 1);
        let is_self = matches!(relationship.as_deref(), Some("SEL" | "01" | "18"));
        if is_self {
            c.insert("subscriber".into(), patient.reference());
        } else if let Some(name) = self.raw(in1, 16).map(|r| Composite::new(r, &self.d)) {
            let display: Vec<String> = [2, 1]
                .iter()
                .filter_map(|&n| name.sub(n, 1).or_else(|| name.get(n)))
                .collect();
            if !display.is_empty() {
                c.insert("subscriber".into(), json!({ "display": display.join(" ") }));
            }
        }
        // the insured's id (IN1-49); the patient's member number (IN2-61)
        // only when the patient is the subscriber
        let subscriber_id = self.text(in1, 49, 1).or_else(|| member.filter(|_| is_self));
        if let Some(id) = subscriber_id {
            c.insert("subscriberId".into(), json!(id));
        }
        c.insert("beneficiary".into(), patient.reference());
        if let Some(code) = relationship.as_deref().map(subscriber_relationship) {
            c.insert(
                "relationship".into(),
                json!({ "coding": [{ "system": format!("{THO}subscriber-relationship"), "code": code }] }),
            );
        }
        let start = self.datetime(in1, 12);
        let end = self.datetime(in1, 13);
        if start.is_some() || end.is_some() {
            let mut period = serde_json::Map::new();
            if let Some(s) = start {
                period.insert("start".into(), s);
            }
            if let Some(e) = end {
                period.insert("end".into(), e);
            }
            c.insert("period".into(), Value::Object(period));
        }
        let payor_reference = match &payor {
            Some((org, _)) => org.reference(),
            None => {
                json!({ "display": self.text(in1, 4, 1).unwrap_or_else(|| "unknown payor".into()) })
            }
        };
        c.insert("payor".into(), json!([payor_reference]));
        let mut classes = Vec::new();
        if let Some(group) = self.text(in1, 8, 1) {
            let mut class = json!({
                "type": { "coding": [{ "system": format!("{THO}coverage-class"), "code": "group" }] },
                "value": group,
            });
            if let Some(name) = self.text(in1, 9, 1) {
                class["name"] = json!(name);
            }
            classes.push(class);
        }
        if let Some(plan) = self.text(in1, 2, 1) {
            let mut class = json!({
                "type": { "coding": [{ "system": format!("{THO}coverage-class"), "code": "plan" }] },
                "value": plan,
            });
            if let Some(name) = self.text(in1, 2, 2) {
                class["name"] = json!(name);
            }
            classes.push(class);
        }
        if !classes.is_empty() {
            c.insert("class".into(), Value::Array(classes));
        }
        c.insert(
            "order".into(),
            json!(set.parse::<u64>().ok().filter(|n| *n > 0).unwrap_or(1)),
        );
        self.push("Coverage", system, value, Value::Object(c));
    }

    /// The payor of an IN1: an Organization on IN1-3 (the company id, with
    /// its authority), named IN1-4; and the key its coverages are scoped by.
    fn payor(&mut self, in1: &Segment<'_>) -> Option<(Local, String)> {
        let raw = self.raw(in1, 3)?;
        let mut id = fhir::identifier(raw, &self.d, &self.o.authorities)?;
        self.default_system(&mut id);
        let system = id.get("system")?.as_str()?.to_owned();
        let value = id.get("value")?.as_str()?.to_owned();
        let mut org = resource("Organization");
        org.insert("identifier".into(), json!([id]));
        org.insert("active".into(), json!(true));
        if let Some(name) = self.text(in1, 4, 1) {
            org.insert("name".into(), json!(name));
        }
        if let Some(address) = self.raw(in1, 5).and_then(|r| fhir::address(r, &self.d)) {
            org.insert("address".into(), json!([address]));
        }
        let key: String = format!("{system}|{value}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        Some((
            self.push("Organization", system, value, Value::Object(org)),
            key,
        ))
    }
}

/// Table 0063 (IN1-17, the insured's relationship to the patient) → the
/// subscriber-relationship code system.
fn subscriber_relationship(code: &str) -> &'static str {
    match code.trim() {
        "SEL" | "01" | "18" => "self",
        "SPO" | "DOM" | "02" => "spouse",
        "CHD" | "FCH" | "SCH" | "03" | "19" => "child",
        "PAR" | "MTH" | "FTH" => "parent",
        _ => "other",
    }
}

impl Mapper<'_, '_> {
    /// GT1 → a RelatedPerson of the patient with the guarantor role (v3
    /// RoleCode GUAR, and GT1-11's relationship beside it), when the
    /// guarantor is someone else: a patient guaranteeing their own account
    /// (GT1-11 SEL) adds nothing (no Account is written; MAPPING.md).
    /// Identity: the patient's value + `-GT1-<set id>`; GT1-2 (the
    /// guarantor number) is kept as an identifier.
    pub(super) fn guarantor(&mut self, gt1: &Segment<'_>, patient: &Local, position: usize) {
        let relationship = self.text(gt1, 11, 1);
        if matches!(relationship.as_deref(), Some("SEL" | "01" | "18")) {
            return;
        }
        let names = self.list(gt1, 3, fhir::human_name);
        if names.is_empty() {
            return;
        }
        let set_id = self.text(gt1, 1, 1).unwrap_or_else(|| position.to_string());
        let (system, value) = Self::derived(patient, &format!("GT1-{set_id}"));
        let mut identifiers = vec![json!({ "system": system, "value": value })];
        identifiers.extend(self.identifiers(gt1, 2));
        let mut r = resource("RelatedPerson");
        r.insert("identifier".into(), Value::Array(identifiers));
        r.insert("active".into(), json!(true));
        r.insert("patient".into(), patient.reference());
        let mut relationships = vec![json!({ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
            "code": "GUAR",
            "display": "guarantor",
        }] })];
        relationships.extend(self.relationship(gt1, 11));
        r.insert("relationship".into(), Value::Array(relationships));
        r.insert("name".into(), Value::Array(names));
        let mut telecom = self.list(gt1, 6, |x, d| fhir::contact_point(x, d, Some("home")));
        telecom.extend(self.list(gt1, 7, |x, d| fhir::contact_point(x, d, Some("work"))));
        if !telecom.is_empty() {
            r.insert("telecom".into(), Value::Array(telecom));
        }
        if let Some(g) = self.text(gt1, 9, 1).and_then(|c| tables::gender(&c)) {
            r.insert("gender".into(), json!(g));
        }
        if let Some(b) = self.date(gt1, 8) {
            r.insert("birthDate".into(), b);
        }
        let addresses = self.list(gt1, 5, fhir::address);
        if !addresses.is_empty() {
            r.insert("address".into(), Value::Array(addresses));
        }
        let mut period = serde_json::Map::new();
        if let Some(s) = self.date(gt1, 13) {
            period.insert("start".into(), s);
        }
        if let Some(e) = self.date(gt1, 14) {
            period.insert("end".into(), e);
        }
        if !period.is_empty() {
            r.insert("period".into(), Value::Object(period));
        }
        self.push("RelatedPerson", system, value, Value::Object(r));
    }

    /// PV2 → the visit's Encounter: the admit reason (PV2-3) as reasonCode,
    /// the actual length of stay (PV2-11, days) as length, the visit
    /// priority (PV2-25, table 0217) as priority.
    pub(super) fn visit_details(&mut self, pv2: &Segment<'_>, encounter: &Local) {
        let reason = self.codeable(pv2, 3);
        let days = self.text(pv2, 11, 1).and_then(|d| d.parse::<u32>().ok());
        let priority = self.text(pv2, 25, 1);
        let Some(&at) = self.seen.get(&(
            encounter.resource_type,
            encounter.system.clone(),
            encounter.value.clone(),
        )) else {
            return;
        };
        let Some(e) = self.out[at].resource.as_object_mut() else {
            return;
        };
        if let Some(reason) = reason {
            e.insert("reasonCode".into(), json!([reason]));
        }
        if let Some(days) = days {
            e.insert(
                "length".into(),
                json!({ "value": days, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d" }),
            );
        }
        if let Some(code) = priority {
            e.insert(
                "priority".into(),
                json!({ "coding": [{ "system": format!("{THO}v2-0217"), "code": code }] }),
            );
        }
    }
}
