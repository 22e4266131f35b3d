//! fhirlift's validator against the real Medplum 5.0.10 of the kit: one
//! invalid resource per kind of mistake, each sent alone to a fresh
//! project. Every resource Medplum refuses, fhirlift refuses too; the ones
//! fhirlift refuses and Medplum stores are listed (printed), each with why
//! refusing is right. Valid controls must pass both.

use fhirlift_tests::medplum::Kit;
use serde_json::{Value, json};

/// (what is wrong, the resource)
fn corpus() -> Vec<(&'static str, Value)> {
    vec![
        (
            "valid: a Patient",
            json!({ "resourceType": "Patient", "gender": "female", "birthDate": "1974-12-25",
            "name": [{ "family": "Chalmers", "given": ["Peter"] }] }),
        ),
        (
            "valid: an Observation",
            json!({ "resourceType": "Observation", "status": "final",
            "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4" }] },
            "valueQuantity": { "value": 72, "unit": "/min" }, "effectiveDateTime": "2024-01-02T03:04:05Z" }),
        ),
        (
            "unknown resource type",
            json!({ "resourceType": "Immunisation", "status": "completed" }),
        ),
        (
            "unknown element (misspelled choice)",
            json!({ "resourceType": "Observation", "status": "final",
            "code": { "text": "x" }, "valueStrng": "a" }),
        ),
        (
            "unknown element",
            json!({ "resourceType": "Patient", "nickname": "Pete" }),
        ),
        (
            "wrong JSON type: boolean as text",
            json!({ "resourceType": "Patient", "active": "yes" }),
        ),
        (
            "wrong JSON type: object as text",
            json!({ "resourceType": "Patient", "name": "Chalmers" }),
        ),
        (
            "bad date",
            json!({ "resourceType": "Patient", "birthDate": "25/12/1974" }),
        ),
        (
            "impossible date",
            json!({ "resourceType": "Patient", "birthDate": "2023-02-29" }),
        ),
        (
            "dateTime with a time but no offset",
            json!({ "resourceType": "Observation", "status": "final",
            "code": { "text": "x" }, "effectiveDateTime": "2024-01-02T03:04:05" }),
        ),
        (
            "required element missing",
            json!({ "resourceType": "Observation", "code": { "text": "x" } }),
        ),
        (
            "a list where one value goes",
            json!({ "resourceType": "Patient", "gender": ["male"] }),
        ),
        (
            "one value where a list goes",
            json!({ "resourceType": "Patient", "name": { "family": "x" } }),
        ),
        (
            "empty string",
            json!({ "resourceType": "Patient", "name": [{ "family": "" }] }),
        ),
        (
            "empty list",
            json!({ "resourceType": "Patient", "identifier": [] }),
        ),
        (
            "code outside its required value set",
            json!({ "resourceType": "Patient", "gender": "bogus" }),
        ),
        (
            "status outside its required value set",
            json!({ "resourceType": "Observation", "status": "done",
            "code": { "text": "x" } }),
        ),
        (
            "reference to a type the element does not allow",
            json!({ "resourceType": "Observation",
            "status": "final", "code": { "text": "x" }, "subject": { "reference": "Medication/123" } }),
        ),
        (
            "a URI with a space",
            json!({ "resourceType": "Patient", "identifier": [{ "system": "http://x y", "value": "1" }] }),
        ),
        (
            "integer as decimal",
            json!({ "resourceType": "Patient", "multipleBirthInteger": 1.5 }),
        ),
    ]
}

#[test]
fn every_resource_medplum_refuses_fhirlift_refuses_too() {
    let project = Kit::from_env().project("fhirlift-e2e-validation-agreement", "fast");
    let fhir = project.fhir();
    let mut disagreements = Vec::new();
    let mut stricter = Vec::new();
    for (what, resource) in corpus() {
        let (status, answer) = fhir.create(&resource);
        let medplum_refuses = (400..500).contains(&status);
        assert!(
            medplum_refuses || (200..300).contains(&status),
            "{what}: Medplum answered {status}: {answer}"
        );
        let mut issues = fhirlift_fhir::validate(&resource);
        issues.retain(fhirlift_fhir::Issue::is_error);
        let fhirlift_refuses = !issues.is_empty();
        let shown: Vec<String> = issues.iter().map(ToString::to_string).collect();
        println!(
            "{what}: Medplum {} ({status}), fhirlift {} {shown:?}",
            if medplum_refuses { "refuses" } else { "stores" },
            if fhirlift_refuses {
                "refuses"
            } else {
                "accepts"
            },
        );
        if what.starts_with("valid:") {
            assert!(
                !medplum_refuses && !fhirlift_refuses,
                "{what}: {answer} {shown:?}"
            );
        } else if medplum_refuses && !fhirlift_refuses {
            disagreements.push(format!("{what}: Medplum says {answer}"));
        } else if !medplum_refuses && fhirlift_refuses {
            stricter.push(what);
        }
    }
    println!("refused by fhirlift, stored by Medplum: {stricter:?}");
    assert!(
        disagreements.is_empty(),
        "Medplum refuses what fhirlift lets through:\n{}",
        disagreements.join("\n")
    );
}
