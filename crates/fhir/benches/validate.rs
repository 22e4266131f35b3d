//! Validation throughput on the example's resources (the Patient,
//! Condition, Encounter and ClinicalImpression of the Medplum guide, as
//! fhirlift maps them), one core: `cargo bench -p fhirlift-fhir`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

fn resources() -> Vec<serde_json::Value> {
    vec![
        json!({ "resourceType": "Patient",
            "identifier": [{ "system": "http://your-source-system.com/patients", "value": "p-1" }],
            "name": [{ "family": "Smith", "given": ["John"] }], "gender": "male", "birthDate": "1980-01-15" }),
        json!({ "resourceType": "Condition",
            "identifier": [{ "system": "http://your-source-system.com/conditions", "value": "c-1" }],
            "subject": { "reference": "Patient?identifier=http://your-source-system.com/patients|p-1" },
            "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes mellitus type 2" }] },
            "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
            "onsetDateTime": "2020-03-01" }),
        json!({ "resourceType": "Encounter",
            "identifier": [{ "system": "http://your-source-system.com/encounters", "value": "e-1" }],
            "status": "finished", "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB" },
            "subject": { "reference": "Patient?identifier=http://your-source-system.com/patients|p-1" },
            "period": { "start": "2024-01-02T09:00:00Z", "end": "2024-01-02T09:30:00Z" } }),
        json!({ "resourceType": "ClinicalImpression",
            "identifier": [{ "system": "http://your-source-system.com/notes", "value": "n-1" }],
            "status": "completed",
            "subject": { "reference": "Patient?identifier=http://your-source-system.com/patients|p-1" },
            "encounter": { "reference": "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e" },
            "summary": "Follow-up visit" }),
    ]
}

fn validate(c: &mut Criterion) {
    let resources = resources();
    for r in &resources {
        let errors = fhirlift_fhir::validate(r)
            .into_iter()
            .filter(|i| i.is_error());
        assert_eq!(errors.count(), 0, "{r}");
    }
    let mut group = c.benchmark_group("validate");
    group.throughput(Throughput::Elements(resources.len() as u64));
    group.bench_function("example resources", |b| {
        b.iter(|| {
            resources
                .iter()
                .map(|r| fhirlift_fhir::validate(std::hint::black_box(r)).len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
