//! The sandbox refuses writes that are not valid FHIR R4, as a real server
//! does: a 400 OperationOutcome naming the rule and place.

use fhirlift_sandbox::SandboxConfig;
use serde_json::json;

mod support;
use support::*;

#[tokio::test]
async fn writes_that_are_not_valid_r4_are_refused_with_a_400_outcome() {
    let (sb, c) = start_validating(SandboxConfig::default()).await;
    let mut bad = patient("V1", "X");
    bad["gender"] = json!("bogus");
    let (s, outcome) = c.send(reqwest::Method::POST, "Patient", Some(bad)).await;
    assert_eq!(s, 400, "{outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let text = outcome["issue"][0]["details"]["text"].as_str().unwrap();
    assert!(
        text.contains("Patient.gender [code-not-in-value-set]"),
        "{text}"
    );
    // inside a transaction, the whole is refused
    let tx = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "request": { "method": "PUT", "url": "Patient?identifier=http://s/p|V2" },
          "resource": patient("V2", "Y") },
        { "request": { "method": "PUT", "url": "Patient?identifier=http://s/p|V3" },
          "resource": { "resourceType": "Patient", "identifier": [{ "system": "http://s/p", "value": "V3" }],
                        "birthDate": "25/12/1974" } }
    ]});
    let (s, outcome) = c.send(reqwest::Method::POST, "", Some(tx)).await;
    assert_eq!(s, 400, "{outcome}");
    sb.with_store(|st| assert_eq!(st.count("Patient"), 0));
    let (s, _) = c
        .send(reqwest::Method::POST, "Patient", Some(patient("V4", "Z")))
        .await;
    assert_eq!(s, 201);
}
