//! SIU^S12–S17, S26 → Appointment: SCH describes it, PID is its patient,
//! AIS / AIG / AIL / AIP its service, resources, location and staff.

use fhirlift_hl7v2::Segment;
use fhirlift_hl7v2::fhir::{self, Composite};
use serde_json::{Value, json};

use super::*;

/// The SIU events the map covers.
pub(super) const SIU_EVENTS: &[&str] = &["S12", "S13", "S14", "S15", "S16", "S17", "S26"];

impl Mapper<'_, '_> {
    /// The Patient and one Appointment.
    pub(super) fn appointment(&mut self, event: &str) -> Result<(), MapFailure> {
        let segments: Vec<Segment<'_>> = self.m.segments().collect();
        let sch = *segments.iter().find(|s| s.name() == "SCH").ok_or_else(|| {
            MapFailure(format!("SIU^{event} without an SCH segment{MISSING_HINT}"))
        })?;
        let mut patient: Option<Local> = None;
        let mut participants: Vec<Value> = Vec::new();
        let mut services: Vec<Value> = Vec::new();
        let mut notes: Vec<String> = Vec::new();
        let mut tq1: Option<Segment<'_>> = None;
        let mut ais_start: Option<Value> = None;
        for s in &segments {
            match s.name() {
                "PID" => {
                    let p = self.patient(s)?;
                    participants.push(json!({ "actor": p.reference(), "status": "accepted" }));
                    patient = Some(p);
                }
                "TQ1" => tq1 = tq1.or(Some(*s)),
                "AIS" => {
                    if let Some(service) = self.codeable(s, 3) {
                        services.push(service);
                    }
                    ais_start = ais_start.or_else(|| self.instant(s, 4));
                }
                "AIG" => {
                    let c = self.raw(s, 3).map(|r| Composite::new(r, &self.d));
                    if let Some(name) = c.as_ref().and_then(|c| c.get(2).or_else(|| c.get(1))) {
                        participants
                            .push(json!({ "actor": { "display": name }, "status": "accepted" }));
                    }
                }
                "AIL" => {
                    let c = self.raw(s, 3).map(|r| Composite::new(r, &self.d));
                    let name = c.as_ref().and_then(|c| {
                        let parts: Vec<String> =
                            [1, 2, 3, 4].iter().filter_map(|&n| c.get(n)).collect();
                        (!parts.is_empty()).then(|| parts.join(" "))
                    });
                    if let Some(name) = name {
                        participants.push(json!({ "actor": { "type": "Location", "display": name }, "status": "accepted" }));
                    }
                }
                "AIP" => {
                    if let Some(mut who) =
                        self.raw(s, 3).and_then(|r| self.practitioner_reference(r))
                    {
                        who["type"] = json!("Practitioner");
                        participants.push(json!({ "actor": who, "status": "accepted" }));
                    }
                }
                "NTE" => {
                    let text: Vec<String> = self
                        .reps(s, 3)
                        .into_iter()
                        .filter_map(|r| fhirlift_hl7v2::decode(r, &self.d))
                        .collect();
                    let text = text.join("\n");
                    if !text.trim().is_empty() {
                        notes.push(text);
                    }
                }
                _ => {}
            }
        }
        let patient = patient.ok_or_else(|| {
            MapFailure(format!("SIU^{event} without a PID segment{MISSING_HINT}"))
        })?;
        let placer = self.entity_id(&sch, 1);
        let filler = self.entity_id(&sch, 2);
        let typed = |id: &(Value, String, String), code: &str| {
            let mut v = id.0.clone();
            v["type"] = json!({ "coding": [{ "system": format!("{THO}v2-0203"), "code": code }] });
            v
        };
        let mut identifiers = Vec::new();
        for (id, kind) in [(&placer, "PLAC"), (&filler, "FILL")] {
            if let Some(id) = id {
                identifiers.push(typed(id, kind));
            }
        }
        let (system, value) = match (&filler, &placer) {
            (Some((_, s, v)), _) => (order_system(s, "FILL"), v.clone()),
            (None, Some((_, s, v))) => (order_system(s, "PLAC"), v.clone()),
            (None, None) => (patient.system.clone(), format!("{}-SCH", self.control_id())),
        };
        identifiers.insert(0, json!({ "system": system, "value": value }));
        let mut r = resource("Appointment");
        r.insert("identifier".into(), Value::Array(identifiers));
        let filler_status = self.text(&sch, 25, 1).and_then(|s| appointment_status(&s));
        let status = match event {
            "S15" | "S16" => "cancelled",
            "S17" => "entered-in-error",
            "S26" => "noshow",
            _ => filler_status.unwrap_or("booked"),
        };
        r.insert("status".into(), json!(status));
        if let Some(t) = self.codeable(&sch, 8) {
            r.insert("appointmentType".into(), t);
        }
        let reasons: Vec<Value> = [7, 6]
            .iter()
            .filter_map(|&n| self.codeable(&sch, n))
            .collect();
        if !reasons.is_empty() {
            r.insert("reasonCode".into(), Value::Array(reasons));
        }
        if !services.is_empty() {
            r.insert("serviceType".into(), Value::Array(services));
        }
        // start and end: TQ1-7/-8 (v2.5+), else SCH-11's TQ.4/.5, else AIS-4
        let timing = self.raw(&sch, 11).map(|r| Composite::new(r, &self.d));
        let from_timing = |n: usize| {
            let text = timing.as_ref()?.get(n)?;
            fhir::instant(&text, &self.o.zone)
                .ok()
                .flatten()
                .map(Value::String)
        };
        let start = tq1
            .as_ref()
            .and_then(|t| self.instant(t, 7))
            .or_else(|| from_timing(4))
            .or(ais_start);
        let end = tq1
            .as_ref()
            .and_then(|t| self.instant(t, 8))
            .or_else(|| from_timing(5));
        // FHIR: both or neither (app-2); a start alone keeps its duration
        if let (Some(start), Some(end)) = (start, end) {
            r.insert("start".into(), start);
            r.insert("end".into(), end);
        }
        let minutes = self
            .text(&sch, 9, 1)
            .and_then(|n| n.trim().parse::<u64>().ok());
        let unit = self
            .text(&sch, 10, 1)
            .unwrap_or_default()
            .to_ascii_lowercase();
        if let Some(n) = minutes.filter(|n| *n > 0)
            && (unit.starts_with("min") || unit == "m")
        {
            r.insert("minutesDuration".into(), json!(n));
        }
        if !notes.is_empty() {
            r.insert("comment".into(), json!(notes.join("\n")));
        }
        r.insert("participant".into(), Value::Array(participants));
        self.push("Appointment", system, value, Value::Object(r));
        Ok(())
    }
}

/// Table 0278 (SCH-25, filler status) → Appointment.status.
fn appointment_status(code: &str) -> Option<&'static str> {
    Some(match code.trim().to_ascii_lowercase().as_str() {
        "booked" | "overbook" => "booked",
        "cancelled" | "dc" => "cancelled",
        "complete" => "fulfilled",
        "deleted" => "entered-in-error",
        "noshow" => "noshow",
        "pending" => "pending",
        "started" => "arrived",
        "waitlist" => "waitlist",
        _ => return None,
    })
}
