//! The built-in OMOP CDM 5.4 map (`map: omop`): a stream naming it stands
//! for one stream per CDM table the map reads (person with death, provider,
//! care_site with its location, visit_occurrence, condition_occurrence,
//! measurement, observation, drug_exposure, procedure_occurrence,
//! device_exposure), each a PostgreSQL query joining the `concept` table
//! for codes, written in the mapping language (`omop.yaml`, beside this
//! file). The decisions, and where they differ from OHDSI's OMOPonFHIR, are
//! in MAPPING.md.
//!
//! Invariant: nothing here runs code of its own; the map is expanded when
//! the migration file is read (`fhirlift-mapping`'s `template_maps`), so
//! its errors point at `omop.yaml:line:col`, and a user's `emit:` entry
//! replaces its resource of the same type.

fhirlift_core::register_template_map! {
    name: "omop",
    description: "an OMOP CDM 5.4 database (PostgreSQL) to FHIR R4: Patient, Practitioner, Organization, Encounter, Condition, Observation, MedicationRequest/MedicationStatement, Procedure, Device + DeviceUseStatement",
    file: "omop.yaml",
    text: include_str!("omop.yaml"),
}

/// The map's text (for tests and documentation).
pub const TEXT: &str = include_str!("omop.yaml");
