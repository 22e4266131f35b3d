//! VXU^V04: per RXA an Immunization (RXR route and site), and the OBX
//! after it as Observations `partOf` it.

use fhirlift_hl7v2::Segment;
use fhirlift_hl7v2::fhir::{self, Composite, tables};
use serde_json::{Map, Value, json};

use super::*;

impl Mapper<'_, '_> {
    pub(super) fn vxu(&mut self) -> Result<(), MapFailure> {
        let pid = self
            .m
            .segment("PID")
            .ok_or_else(|| MapFailure("VXU^V04 without a PID segment".into()))?;
        let patient = self.patient(&pid)?;
        let segments: Vec<Segment<'_>> = self.m.segments().collect();
        let mut orc: Option<Segment<'_>> = None;
        let mut immunization: Option<Local> = None;
        let mut last_obs: Option<Local> = None;
        let mut encounter: Option<Local> = None;
        let mut obx_index = 0;
        for (i, s) in segments.iter().enumerate() {
            match s.name() {
                "PD1" => self.primary_care(s, &patient),
                "NK1" => self.related_person(s, &patient, i),
                // the visit the vaccines were given in
                "PV1" => encounter = self.encounter(s, &patient, None),
                "IN1" => {
                    let in2 = segments.get(i + 1).filter(|n| n.name() == "IN2");
                    self.coverage(s, in2, &patient);
                }
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
                    let given = self.immunization(s, orc.as_ref(), rxr.as_ref(), &patient)?;
                    if let Some(e) = &encounter {
                        self.set_element(&given, "encounter", e.reference());
                    }
                    immunization = Some(given);
                    last_obs = None;
                }
                "OBX" => {
                    obx_index += 1;
                    last_obs = match immunization.clone() {
                        Some(imm) => {
                            self.observation(s, &patient, None, &imm, obx_index, Some(&imm))
                        }
                        // about the patient (before any RXA): the visit's or theirs
                        None => {
                            let parent = encounter.clone().unwrap_or_else(|| patient.clone());
                            let e = encounter.clone();
                            self.observation(s, &patient, e.as_ref(), &parent, obx_index, None)
                        }
                    };
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

    /// RXA (with its ORC and RXR) → Immunization: identity, status,
    /// vaccine, patient, when, source, the product given, route and site,
    /// administering providers.
    pub(super) fn immunization(
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
        let (identifiers, (system, value)) = self.immunization_identity(rxa, orc, patient);
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
        self.product(rxa, &mut i);
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

    /// The Immunization's identifiers and identity: its filler (else
    /// placer) order number in a system of its kind, else one derived from
    /// the patient, the vaccine and the day.
    fn immunization_identity(
        &self,
        rxa: &Segment<'_>,
        orc: Option<&Segment<'_>>,
        patient: &Local,
    ) -> (Vec<Value>, (String, String)) {
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
        let identity = match order {
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
        (identifiers, identity)
    }

    /// Lot, expiry, manufacturer (MVX) and dose of what was given.
    fn product(&self, rxa: &Segment<'_>, i: &mut Map<String, Value>) {
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
    }
}
