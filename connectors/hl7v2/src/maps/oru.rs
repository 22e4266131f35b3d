//! ORU^R01: per OBR a ServiceRequest and a DiagnosticReport based on it,
//! per OBX an Observation (its value by OBX-2), the NTEs after it as notes
//! (after the OBR: the order's), per SPM a Specimen.

use fhirlift_hl7v2::Segment;

use super::orders::Order;
use fhirlift_hl7v2::fhir::{self, Composite, tables};
use serde_json::{Map, Value, json};

use super::*;

impl Mapper<'_, '_> {
    pub(super) fn oru(&mut self) -> Result<(), MapFailure> {
        let segments: Vec<Segment<'_>> = self.m.segments().collect();
        let mut patient: Option<Local> = None;
        let mut encounter: Option<Local> = None;
        let mut orc: Option<Segment<'_>> = None;
        // the report being filled: its Local, resource index, and results
        let mut report: Option<(Local, Vec<Value>)> = None;
        // the order it is based on, its results and specimens
        let mut order: Option<Order> = None;
        let mut report_obs: Vec<Local> = Vec::new();
        let mut last_obs: Option<Local> = None;
        let mut obx_index = 0;
        let mut obr_count = 0;
        for s in &segments {
            match s.name() {
                "PID" => {
                    self.close_specimens(&mut order, &report, &mut report_obs);
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
                    self.close_specimens(&mut order, &report, &mut report_obs);
                    self.close_report(&mut report);
                    let p = patient
                        .clone()
                        .ok_or_else(|| MapFailure("ORU^R01: an OBR comes before any PID".into()))?;
                    obr_count += 1;
                    order = self
                        .service_request(orc.as_ref(), s, &p, encounter.as_ref(), obr_count)
                        .map(|request| Order {
                            request,
                            specimens: Vec::new(),
                        });
                    let rep = self.report(s, orc.as_ref(), &p, encounter.as_ref())?;
                    if let Some(o) = &order {
                        let based_on = o.request.reference();
                        self.append(&rep, "basedOn", based_on);
                    }
                    report = Some((rep, Vec::new()));
                    orc = None;
                    // an NTE right after the OBR is the order's note
                    last_obs = order.as_ref().map(|o| o.request.clone());
                    obx_index = 0;
                }
                "SPM" => {
                    if let (Some(p), Some((rep, _))) = (&patient, &report) {
                        let parent = order
                            .as_ref()
                            .map_or_else(|| rep.clone(), |o| o.request.clone());
                        let rep = rep.clone();
                        let specimen = self.specimen(s, p, &parent).reference();
                        self.append(&rep, "specimen", specimen.clone());
                        if let Some(o) = &mut order {
                            o.specimens.push(specimen);
                        }
                    }
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
                        report_obs.push(o.clone());
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
        self.close_specimens(&mut order, &report, &mut report_obs);
        self.close_report(&mut report);
        if patient.is_none() {
            return Err(MapFailure("ORU^R01 without a PID segment".into()));
        }
        Ok(())
    }

    /// At the end of an OBR group: its order gets the specimens, and when
    /// the group has exactly one specimen, every result is of it.
    fn close_specimens(
        &mut self,
        order: &mut Option<Order>,
        report: &Option<(Local, Vec<Value>)>,
        results: &mut Vec<Local>,
    ) {
        let specimens = order
            .as_ref()
            .map(|o| o.specimens.clone())
            .unwrap_or_default();
        self.close_order(order);
        if let ([one], Some(_)) = (specimens.as_slice(), report) {
            for o in results.iter() {
                if let Some(&at) =
                    self.seen
                        .get(&(o.resource_type, o.system.clone(), o.value.clone()))
                    && let Some(obj) = self.out[at].resource.as_object_mut()
                {
                    obj.insert("specimen".into(), one.clone());
                }
            }
        }
        results.clear();
    }

    pub(super) fn close_report(&mut self, report: &mut Option<(Local, Vec<Value>)>) {
        if let Some((rep, results)) = report.take()
            && !results.is_empty()
        {
            let at = self.seen[&("DiagnosticReport", rep.system.clone(), rep.value.clone())];
            if let Some(obj) = self.out[at].resource.as_object_mut() {
                obj.insert("result".into(), Value::Array(results));
            }
        }
    }

    pub(super) fn report(
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
            Some((s, v)) => {
                let v = self.unique_order_value("DiagnosticReport", &s, v, obr);
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

    pub(super) fn observation(
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
        let repeated: Vec<&str> = self
            .reps(obx, 5)
            .into_iter()
            .filter(|r| !r.trim().is_empty())
            .collect();
        if repeated.len() > 1 && !is_text_type(&value_type) {
            // OBX-5 repeats (`60~120`): one component each, coded as the
            // observation (the guide's rule); text repeats are lines
            let code = o["code"].clone();
            let components: Vec<Value> = repeated
                .iter()
                .filter_map(|rep| self.one_value(obx, rep, &value_type))
                .map(|(key, v)| json!({ "code": code, key: v }))
                .collect();
            if !components.is_empty() {
                o.insert("component".into(), Value::Array(components));
            }
        } else {
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

    /// OBX-5 by OBX-2 (table 0125) → the value[x] element: the first
    /// repetition, or for text types every repetition as a line.
    pub(super) fn observation_value(
        &self,
        obx: &Segment<'_>,
        value_type: &str,
    ) -> Option<(&'static str, Value)> {
        let reps = self.reps(obx, 5);
        if is_text_type(value_type) {
            // ST, TX, FT and anything unknown: the text, repetitions on lines
            let text: Vec<String> = reps
                .iter()
                .filter_map(|r| fhirlift_hl7v2::decode(r, &self.d))
                .filter(|t| !t.trim().is_empty())
                .collect();
            return (!text.is_empty()).then(|| ("valueString", json!(text.join("\n"))));
        }
        self.one_value(obx, reps.first()?, value_type)
    }

    /// One OBX-5 repetition of a non-text type → (value[x] key, value).
    fn one_value(
        &self,
        obx: &Segment<'_>,
        first: &str,
        value_type: &str,
    ) -> Option<(&'static str, Value)> {
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
            _ => None,
        }
    }

    /// NTE → a note on the resource before it.
    pub(super) fn note(&mut self, nte: &Segment<'_>, on: &Local) {
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
}

/// Whether OBX-2 names text (ST, TX, FT) or a type the map does not read
/// as a value of its own (everything but the coded, numeric, date and
/// time types, ED and RP): its repetitions are lines of one text.
fn is_text_type(value_type: &str) -> bool {
    !matches!(
        value_type,
        "NM" | "SN"
            | "CE"
            | "CWE"
            | "CNE"
            | "CF"
            | "IS"
            | "ID"
            | "DT"
            | "DTM"
            | "TS"
            | "TM"
            | "NR"
            | "ED"
            | "RP"
    )
}
