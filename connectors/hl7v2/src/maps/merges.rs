//! Merges and deletions: ADT A40 (merge patient), A29 (delete person
//! information), A23 (delete a visit).
//!
//! None of them deletes or rewrites what other messages wrote: they are
//! amendments ([`MappedResource::amends`]), whose few elements go onto the
//! resource the server stores. A merge keeps both Patients, linked, so that
//! whatever points at the retired one still finds it; a deletion marks the
//! resource (`active: false`, `entered-in-error`) instead of removing it,
//! for the same reason. The guide maps none of these messages; the choices
//! are recorded in MAPPING.md.

use fhirlift_hl7v2::Segment;
use serde_json::{Value, json};

use super::*;

impl Mapper<'_, '_> {
    /// ADT^A40: each patient group (PID, PD1, MRG, PV1) merges the patient
    /// MRG names into the one PID names. The survivor is written from its
    /// PID with `link: replaces`; the retired Patient is amended to
    /// `active: false` with `link: replaced-by` (created so, when the
    /// server never held it). PV1 in a merge is context only: no Encounter.
    pub(super) fn merge(&mut self) -> Result<(), MapFailure> {
        let segments: Vec<Segment<'_>> = self.m.segments().collect();
        let mut groups = 0;
        for (i, pid) in segments.iter().enumerate() {
            if pid.name() != "PID" {
                continue;
            }
            groups += 1;
            let mrg = segments[i + 1..]
                .iter()
                .take_while(|s| s.name() != "PID")
                .find(|s| s.name() == "MRG")
                .ok_or_else(|| {
                    MapFailure(format!(
                        "ADT^A40 patient group {groups} has no MRG segment: a merge names the patient it retires in MRG-1{MISSING_HINT}"
                    ))
                })?;
            let survivor = self.patient(pid)?;
            let (identifiers, (system, value)) = self.prior_identifiers(mrg)?;
            if (system.as_str(), value.as_str())
                == (survivor.system.as_str(), survivor.value.as_str())
            {
                return Err(MapFailure(format!(
                    "ADT^A40 patient group {groups}: MRG-1 names the surviving patient itself ({system}|{value}), so there is nothing to merge; correct MRG-1 at the source"
                )));
            }
            let mut retired = resource("Patient");
            retired.insert("identifier".into(), Value::Array(identifiers));
            retired.insert("active".into(), json!(false));
            retired.insert(
                "link".into(),
                json!([{ "other": survivor.reference(), "type": "replaced-by" }]),
            );
            let retired = self.push_amendment("Patient", system, value, Value::Object(retired));
            let at = self.seen[&("Patient", survivor.system.clone(), survivor.value.clone())];
            if let Some(obj) = self.out[at].resource.as_object_mut() {
                obj.insert(
                    "link".into(),
                    json!([{ "other": retired.reference(), "type": "replaces" }]),
                );
            }
        }
        if groups == 0 {
            return Err(MapFailure(format!(
                "ADT^A40 without a PID segment{MISSING_HINT}"
            )));
        }
        Ok(())
    }

    /// The retired patient's identifiers (MRG-1, then MRG-4, the prior
    /// patient ID) and its identity, by the rule PID-3 follows.
    fn prior_identifiers(
        &self,
        mrg: &Segment<'_>,
    ) -> Result<(Vec<Value>, (String, String)), MapFailure> {
        let mut identifiers = self.identifiers(mrg, 1);
        identifiers.extend(self.identifiers(mrg, 4));
        let identity = identifiers
            .iter()
            .find_map(|id| {
                Some((
                    id.get("system")?.as_str()?.to_owned(),
                    id.get("value")?.as_str()?.to_owned(),
                ))
            })
            .ok_or_else(|| {
                MapFailure(
                    "MRG-1 (and MRG-4) name no prior patient identifier with an assigning authority or a sending facility to scope it: the merge cannot tell which Patient it retires; set map.default_authority to the system of this archive's identifiers".into(),
                )
            })?;
        Ok((identifiers, identity))
    }

    /// ADT^A29: the person's Patient is amended to `active: false`.
    pub(super) fn person_deleted(&mut self) -> Result<(), MapFailure> {
        let pid = self
            .m
            .segment("PID")
            .ok_or_else(|| MapFailure(format!("ADT^A29 without a PID segment{MISSING_HINT}")))?;
        let (identifiers, (system, value)) = self.patient_identifiers(&pid)?;
        let mut p = resource("Patient");
        p.insert("identifier".into(), Value::Array(identifiers));
        p.insert("active".into(), json!(false));
        self.push_amendment("Patient", system, value, Value::Object(p));
        Ok(())
    }

    /// ADT^A23: the visit's Encounter (PV1-19) is amended to
    /// `entered-in-error`. A visit the server never held stays unwritten:
    /// the server refuses an Encounter without its class and subject, and
    /// the record is rejected with its answer.
    pub(super) fn visit_deleted(&mut self) -> Result<(), MapFailure> {
        let pv1 = self
            .m
            .segment("PV1")
            .ok_or_else(|| MapFailure(format!("ADT^A23 without a PV1 segment{MISSING_HINT}")))?;
        let mut identifiers = self.identifiers(&pv1, 19);
        let visit = identifiers.first_mut().map(Value::take).ok_or_else(|| {
            MapFailure(format!(
                "ADT^A23 names no visit number (PV1-19): the deletion cannot tell which Encounter it marks{MISSING_HINT}"
            ))
        })?;
        let (Some(system), Some(value)) = (
            visit
                .get("system")
                .and_then(Value::as_str)
                .map(str::to_owned),
            visit
                .get("value")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ) else {
            return Err(MapFailure(
                "ADT^A23: PV1-19 has no assigning authority or sending facility to scope it; set map.default_authority".into(),
            ));
        };
        let mut visit = visit;
        // as the Encounter's own (PV1-19 is a VN whatever CX.5 says)
        visit["type"] = json!({ "coding": [{ "system": format!("{THO}v2-0203"), "code": "VN", "display": "Visit number" }] });
        let mut e = resource("Encounter");
        e.insert("identifier".into(), json!([visit]));
        e.insert("status".into(), json!("entered-in-error"));
        self.push_amendment("Encounter", system, value, Value::Object(e));
        Ok(())
    }
}
