//! MDM^T01–T11 → DocumentReference: TXA describes the document, the OBX
//! segments hold its content (text lines, or an ED attachment).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use fhirlift_hl7v2::Segment;
use fhirlift_hl7v2::fhir::Composite;
use serde_json::{Value, json};

use super::*;

impl Mapper<'_, '_> {
    /// The Patient (and Encounter) and one DocumentReference.
    pub(super) fn document(&mut self, event: &str) -> Result<(), MapFailure> {
        let segments: Vec<Segment<'_>> = self.m.segments().collect();
        let mut patient: Option<Local> = None;
        let mut encounter: Option<Local> = None;
        let mut txa: Option<Segment<'_>> = None;
        let mut lines: Vec<String> = Vec::new();
        let mut attachments: Vec<Value> = Vec::new();
        for s in &segments {
            match s.name() {
                "PID" => patient = Some(self.patient(s)?),
                "PV1" => {
                    if let Some(p) = &patient {
                        encounter = self.encounter(s, p, None);
                    }
                }
                "TXA" => txa = Some(*s),
                "OBX" => {
                    let value_type = self.text(s, 2, 1).unwrap_or_default();
                    if value_type == "ED" {
                        attachments.extend(self.reps(s, 5).into_iter().filter_map(|r| self.ed(r)));
                    } else {
                        lines.extend(
                            self.reps(s, 5)
                                .into_iter()
                                .filter_map(|r| fhirlift_hl7v2::decode(r, &self.d)),
                        );
                    }
                }
                _ => {}
            }
        }
        let patient = patient.ok_or_else(|| {
            MapFailure(format!("MDM^{event} without a PID segment{MISSING_HINT}"))
        })?;
        let txa = txa.ok_or_else(|| {
            MapFailure(format!(
                "MDM^{event} without a TXA segment (the document's header){MISSING_HINT}"
            ))
        })?;
        let (identifier, system, value) = match self.entity_id(&txa, 12) {
            Some(found) => found,
            None => {
                let system = self
                    .facility_system
                    .clone()
                    .unwrap_or_else(|| patient.system.clone());
                let value = format!("{}-TXA", self.control_id());
                (json!({ "system": system, "value": value }), system, value)
            }
        };
        let mut r = resource("DocumentReference");
        r.insert("masterIdentifier".into(), identifier.clone());
        r.insert("identifier".into(), json!([identifier]));
        let availability = self.text(&txa, 19, 1);
        let status = match (event, availability.as_deref()) {
            ("T11", _) | (_, Some("CA")) => "entered-in-error",
            (_, Some("OB")) => "superseded",
            _ => "current",
        };
        r.insert("status".into(), json!(status));
        let doc_status = match self.text(&txa, 17, 1).as_deref() {
            Some("AU" | "LA") => Some("final"),
            Some("DI" | "DO" | "IN" | "IP" | "PA") => Some("preliminary"),
            _ => None,
        };
        if let Some(d) = doc_status {
            r.insert("docStatus".into(), json!(d));
        }
        if let Some(mut kind) = self.codeable(&txa, 2) {
            // a bare code of table 0270 (DS, CN, ...) names its system
            if let Some(coding) = kind.get_mut("coding").and_then(Value::as_array_mut) {
                for c in coding.iter_mut().filter(|c| c.get("system").is_none()) {
                    c["system"] = json!(format!("{THO}v2-0270"));
                }
            }
            r.insert("type".into(), kind);
        }
        r.insert("subject".into(), patient.reference());
        if let Some(at) = self.instant(&txa, 6).or_else(|| self.instant(&txa, 4)) {
            r.insert("date".into(), at);
        }
        let authors: Vec<Value> = [9, 5]
            .into_iter()
            .filter_map(|n| self.raw(&txa, n))
            .filter_map(|raw| self.practitioner_reference(raw))
            .take(1)
            .collect();
        if !authors.is_empty() {
            r.insert("author".into(), Value::Array(authors));
        }
        let text = lines.join("\n");
        if !text.trim().is_empty() {
            attachments.insert(
                0,
                json!({
                    "contentType": "text/plain; charset=utf-8",
                    "data": STANDARD.encode(text.as_bytes()),
                }),
            );
        }
        if attachments.is_empty() {
            // content is required: the document is named, its text not sent
            let title = self
                .text(&txa, 16, 1)
                .unwrap_or_else(|| "document without content in the message".into());
            attachments.push(json!({ "title": title }));
        }
        let content: Vec<Value> = attachments
            .into_iter()
            .map(|a| json!({ "attachment": a }))
            .collect();
        r.insert("content".into(), Value::Array(content));
        if let Some(e) = &encounter {
            r.insert("context".into(), json!({ "encounter": [e.reference()] }));
        }
        self.push("DocumentReference", system, value, Value::Object(r));
        Ok(())
    }

    /// An ED (encapsulated data) → an Attachment: its media type from ED.2
    /// and ED.3, its data ED.5 (already base64 when ED.4 says so, else the
    /// text encoded).
    fn ed(&self, raw: &str) -> Option<Value> {
        let c = Composite::new(raw, &self.d);
        let data = c.get(5)?;
        let kind = c.get(2).unwrap_or_default().to_ascii_uppercase();
        let subtype = c.get(3).unwrap_or_default().to_ascii_uppercase();
        let content_type = match (kind.as_str(), subtype.as_str()) {
            (_, "PDF") => "application/pdf",
            (_, "JPEG" | "JPG") => "image/jpeg",
            (_, "PNG") => "image/png",
            (_, "TIFF") => "image/tiff",
            (_, "RTF") => "application/rtf",
            (_, "HTML") => "text/html",
            (_, "XML") => "application/xml",
            ("TEXT", _) => "text/plain",
            _ => "application/octet-stream",
        };
        let encoding = c.get(4).unwrap_or_default().to_ascii_uppercase();
        let data = if encoding == "BASE64" {
            let compact: String = data.chars().filter(|c| !c.is_whitespace()).collect();
            STANDARD.decode(&compact).ok()?;
            compact
        } else {
            STANDARD.encode(data.as_bytes())
        };
        Some(json!({ "contentType": content_type, "data": data }))
    }
}
