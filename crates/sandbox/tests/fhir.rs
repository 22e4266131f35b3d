//! The sandbox's FHIR semantics, over real HTTP.

use fhirlift_sandbox::{Limits, Sandbox, SandboxConfig};
use serde_json::{Value, json};

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}/{path}", self.base));
        if let Some(b) = body {
            request = request
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

async fn start(config: SandboxConfig) -> (Sandbox, Client) {
    let sandbox = Sandbox::start(config).await.unwrap();
    let client = Client {
        http: reqwest::Client::new(),
        base: sandbox.base_url(),
    };
    (sandbox, client)
}

fn patient(value: &str, family: &str) -> Value {
    json!({ "resourceType": "Patient", "identifier": [{ "system": "http://s/p", "value": value }], "name": [{ "family": family }] })
}

#[tokio::test]
async fn conditional_update_creates_updates_keeps_unchanged_and_refuses_ambiguity() {
    let (_sb, c) = start(SandboxConfig::default()).await;
    let put = reqwest::Method::PUT;
    let (s, first) = c
        .send(
            put.clone(),
            "Patient?identifier=http://s/p%7CA%5C%2C1",
            Some(patient("A,1", "X")),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(first["meta"]["versionId"], "1");
    let (s, same) = c
        .send(
            put.clone(),
            "Patient?identifier=http://s/p|A%5C,1",
            Some(patient("A,1", "X")),
        )
        .await;
    assert_eq!(
        (s, same["meta"]["versionId"].clone()),
        (200, json!("1")),
        "unchanged keeps its version"
    );
    assert_eq!(same["id"], first["id"]);
    let (s, changed) = c
        .send(
            put.clone(),
            "Patient?identifier=http://s/p|A%5C,1",
            Some(patient("A,1", "Y")),
        )
        .await;
    assert_eq!((s, changed["meta"]["versionId"].clone()), (200, json!("2")));

    let post = reqwest::Method::POST;
    assert_eq!(
        c.send(post.clone(), "Patient", Some(patient("B", "1")))
            .await
            .0,
        201
    );
    assert_eq!(
        c.send(post.clone(), "Patient", Some(patient("B", "2")))
            .await
            .0,
        201
    );
    let (s, outcome) = c
        .send(
            put.clone(),
            "Patient?identifier=http://s/p|B",
            Some(patient("B", "3")),
        )
        .await;
    assert_eq!(s, 412);
    assert_eq!(outcome["issue"][0]["code"], "multiple-matches");

    let mut with_id = patient("C", "Z");
    with_id["id"] = json!("chosen");
    let (s, _) = c
        .send(put, "Patient?identifier=http://s/p|C", Some(with_id))
        .await;
    assert_eq!(s, 400, "the server assigns ids");
}

#[tokio::test]
async fn search_by_many_identifiers_counts_and_pages() {
    let (_sb, c) = start(SandboxConfig::default()).await;
    for v in ["a", "b", "c"] {
        c.send(reqwest::Method::POST, "Patient", Some(patient(v, v)))
            .await;
    }
    let get = reqwest::Method::GET;
    let (s, found) = c
        .send(
            get.clone(),
            "Patient?identifier=http://s/p|a,http://s/p|c,http://s/p|zz",
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(found["total"], 2);
    assert_eq!(found["entry"].as_array().unwrap().len(), 2);
    let (_, counted) = c
        .send(
            get.clone(),
            "Patient?identifier=http://s/p|a,http://s/p|b&_summary=count",
            None,
        )
        .await;
    assert_eq!(counted["total"], 2);
    assert!(counted.get("entry").is_none());
    let (_, paged) = c
        .send(
            get.clone(),
            "Patient?identifier=http://s/p|a,http://s/p|b&_count=1",
            None,
        )
        .await;
    assert_eq!(paged["entry"].as_array().unwrap().len(), 1);
    let (_, meta) = c.send(get, "metadata", None).await;
    assert_eq!(meta["software"]["name"], "fhirlift-sandbox");
}

#[tokio::test]
async fn a_failing_transaction_writes_nothing_and_a_good_one_links_by_urn_uuid() {
    let (sb, c) = start(SandboxConfig::default()).await;
    c.send(reqwest::Method::POST, "Patient", Some(patient("P1", "X")))
        .await;
    let tx = |subject: &str| {
        json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
            { "fullUrl": "urn:uuid:enc", "request": { "method": "PUT", "url": "Encounter?identifier=http://s/e|E1" },
              "resource": { "resourceType": "Encounter", "identifier": [{ "system": "http://s/e", "value": "E1" }],
                            "subject": { "reference": "Patient?identifier=http://s/p|P1" } } },
            { "request": { "method": "PUT", "url": "ClinicalImpression?identifier=http://s/n|E1" },
              "resource": { "resourceType": "ClinicalImpression", "identifier": [{ "system": "http://s/n", "value": "E1" }],
                            "encounter": { "reference": "urn:uuid:enc" },
                            "subject": { "reference": subject } } }
        ]})
    };
    let (s, outcome) = c
        .send(
            reqwest::Method::POST,
            "",
            Some(tx("Patient?identifier=http://s/p|NOBODY")),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        outcome["issue"][0]["details"]["text"]
            .as_str()
            .unwrap()
            .contains("did not match any resources")
    );
    sb.with_store(|st| assert_eq!(st.count("Encounter"), 0, "rolled back"));

    let (s, response) = c
        .send(
            reqwest::Method::POST,
            "",
            Some(tx("Patient?identifier=http://s/p|P1")),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(response["type"], "transaction-response");
    sb.with_store(|st| {
        let enc = st.find("Encounter", "http://s/e", "E1")[0];
        let note = st.find("ClinicalImpression", "http://s/n", "E1")[0];
        assert_eq!(
            note["encounter"]["reference"],
            format!("Encounter/{}", enc["id"].as_str().unwrap())
        );
        assert!(
            enc["subject"]["reference"]
                .as_str()
                .unwrap()
                .starts_with("Patient/")
        );
    });
}

#[tokio::test]
async fn limits_refuse_big_bodies_and_long_batches_as_medplum_does() {
    let (_sb, c) = start(SandboxConfig {
        limits: Limits {
            max_body_bytes: Some(2_000),
            max_batch_entries: Some(2),
            max_transaction_entries: None,
            quota: None,
        },
        ..SandboxConfig::default()
    })
    .await;
    let entry = |v: &str| json!({ "request": { "method": "PUT", "url": format!("Patient?identifier=http://s/p|{v}") }, "resource": patient(v, v) });
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [entry("1"), entry("2"), entry("3")] });
    let (s, outcome) = c.send(reqwest::Method::POST, "", Some(batch)).await;
    assert_eq!(s, 400);
    assert!(
        outcome["issue"][0]["details"]["text"]
            .as_str()
            .unwrap()
            .contains("at most 2")
    );
    let big = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "PUT", "url": "Patient?identifier=http://s/p|big" },
          "resource": { "resourceType": "Patient", "identifier": [{ "system": "http://s/p", "value": "big" }], "text": { "div": "x".repeat(3000) } } }
    ]});
    let (s, outcome) = c.send(reqwest::Method::POST, "", Some(big)).await;
    assert_eq!(s, 400);
    assert_eq!(outcome["issue"][0]["details"]["text"], "File too large");
}
