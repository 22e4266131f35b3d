//! The sandbox's FHIR semantics, over real HTTP.

use std::sync::atomic::Ordering;
use std::time::Duration;

use fhirlift_sandbox::{Limits, MedplumBehaviour, Quota, SandboxConfig};
use reqwest::Method;
use serde_json::{Value, json};

mod support;
use support::*;

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
            ..Limits::default()
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

fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({ "resourceType": "Bundle", "type": kind, "entry": entries })
}

/// `PUT Patient?identifier=http://s/p|value`
fn put_patient(value: &str) -> Value {
    json!({ "request": { "method": "PUT", "url": format!("Patient?identifier=http://s/p|{value}") },
            "resource": patient(value, value) })
}

fn post(resource: Value) -> Value {
    let url = resource["resourceType"].as_str().unwrap().to_owned();
    json!({ "request": { "method": "POST", "url": url }, "resource": resource })
}

fn observation(subject: &str) -> Value {
    json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" },
            "subject": { "reference": subject } })
}

/// The status codes of a response bundle's entries.
fn statuses(bundle: &Value) -> Vec<u16> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["response"]["status"].as_str().unwrap()[..3]
                .parse()
                .unwrap()
        })
        .collect()
}

fn issue(outcome: &Value) -> String {
    outcome["issue"][0]["details"]["text"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn medplum_metadata_names_medplum_5_0_10() {
    let (_sb, c) = start(medplum(MedplumBehaviour::default())).await;
    let (s, meta) = c.send(Method::GET, "metadata", None).await;
    assert_eq!(s, 200);
    assert_eq!(meta["software"]["name"], "medplum");
    assert_eq!(meta["software"]["version"], "5.0.10");
}

#[tokio::test]
async fn medplum_every_answer_carries_ratelimit_and_the_quota_refuses_with_429() {
    let ratelimit = |a: &Answer| {
        a.headers
            .get("ratelimit")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (_sb, c) = start(medplum(MedplumBehaviour::default())).await;
    for a in [
        c.call(Method::GET, "metadata", None, &[]).await,
        c.call(Method::POST, "Patient", Some(patient("a", "A")), &[])
            .await,
        c.call(Method::GET, "Patient?identifier=http://s/p|a", None, &[])
            .await,
        c.call(Method::GET, "Patient/unknown", None, &[]).await,
    ] {
        let header = ratelimit(&a);
        assert!(
            header.starts_with("\"requests\";r=")
                && header.contains("\"fhirInteractions\";r=50000;t="),
            "{} {header:?}",
            a.status
        );
    }

    let (sb, c) = start(SandboxConfig {
        limits: Limits {
            quota: Some(Quota {
                units: 20,
                window: Duration::from_secs(600),
                write_cost: 10,
            }),
            ..Limits::default()
        },
        ..medplum(MedplumBehaviour::default())
    })
    .await;
    let posts = (0..3)
        .map(|i| post(patient(&format!("q{i}"), "Q")))
        .collect();
    let a = c
        .call(Method::POST, "", Some(bundle("batch", posts)), &[])
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(statuses(&a.body), [201, 201, 429]);
    assert!(
        ratelimit(&a).contains("\"fhirInteractions\";r=0;t="),
        "{}",
        ratelimit(&a)
    );
    let a = c
        .call(Method::POST, "Patient", Some(patient("q9", "Q")), &[])
        .await;
    assert_eq!(a.status, 429);
    assert_eq!(a.body["issue"][0]["code"], "throttled");
    assert!(a.headers.get("retry-after").is_none());
    sb.with_store(|st| assert_eq!(st.count("Patient"), 2));
}

#[tokio::test]
async fn medplum_bodies_over_one_megabyte_are_file_too_large() {
    let big = |size: usize| {
        let mut p = patient("big", "B");
        p["text"] = json!({ "status": "generated", "div": "x".repeat(size) });
        p
    };
    let (_sb, c) = start(medplum(MedplumBehaviour::default())).await;
    let (s, outcome) = c.send(Method::POST, "Patient", Some(big(1_000_100))).await;
    assert_eq!(s, 400);
    assert_eq!(issue(&outcome), "File too large");
    let entries = vec![post(big(1_000_100))];
    let (s, outcome) = c
        .send(Method::POST, "", Some(bundle("batch", entries.clone())))
        .await;
    assert_eq!((s, issue(&outcome)), (400, "File too large".to_owned()));
    let (s, _) = c.send(Method::POST, "Patient", Some(big(990_000))).await;
    assert_eq!(s, 201);
    // an async batch may hold up to 50 MB
    let a = c
        .call(
            Method::POST,
            "",
            Some(bundle("batch", entries.clone())),
            &[("prefer", "respond-async")],
        )
        .await;
    assert_eq!(a.status, 202);

    let (_sb, c) = start(SandboxConfig::default()).await;
    let (s, _) = c.send(Method::POST, "Patient", Some(big(1_000_100))).await;
    assert_eq!(s, 201, "a generic sandbox has no limit unless one is set");
}

#[tokio::test]
async fn medplum_batches_run_creates_before_updates_and_answer_in_bundle_order() {
    // the Observation refers to a Patient a PUT earlier in the bundle creates
    let entries = || {
        vec![
            put_patient("NEW"),
            post(observation("Patient?identifier=http://s/p|NEW")),
        ]
    };
    let (_sb, c) = start(SandboxConfig::default()).await;
    let (_, response) = c
        .send(Method::POST, "", Some(bundle("batch", entries())))
        .await;
    assert_eq!(statuses(&response), [201, 201], "in bundle order");

    let (sb, c) = start(medplum(MedplumBehaviour::default())).await;
    let (s, response) = c
        .send(Method::POST, "", Some(bundle("batch", entries())))
        .await;
    assert_eq!(s, 200);
    assert_eq!(response["type"], "batch-response");
    assert_eq!(statuses(&response), [201, 400], "the POST ran first");
    assert!(
        response["entry"][0]["response"]["location"]
            .as_str()
            .unwrap()
            .starts_with("Patient/")
    );
    assert!(
        issue(&response["entry"][1]["response"]["outcome"]).contains("did not match any resources")
    );
    sb.with_store(|st| {
        assert_eq!(st.count("Patient"), 1);
        assert_eq!(st.count("Observation"), 0);
    });
}

#[tokio::test]
async fn medplum_concurrent_conditional_writes_conflict_but_creates_never_do() {
    let (sb, c) = start(SandboxConfig {
        faults: fhirlift_sandbox::Faults {
            seed: 7,
            ..Default::default()
        },
        ..medplum(MedplumBehaviour {
            write_cost: Duration::from_millis(10),
            conflict_rate: 0.5,
            ..MedplumBehaviour::default()
        })
    })
    .await;
    // each batch holds its worker for 200 ms: the three are in flight together
    let run = |make: fn(usize, usize) -> Value| {
        let tasks: Vec<_> = (0..3)
            .map(|b| {
                let c = c.clone();
                let entries = (0..20).map(|i| make(b, i)).collect();
                tokio::spawn(async move {
                    c.send(Method::POST, "", Some(bundle("batch", entries)))
                        .await
                })
            })
            .collect();
        async move {
            let mut codes = Vec::new();
            for t in tasks {
                let (s, response) = t.await.unwrap();
                assert_eq!(s, 200);
                codes.extend(statuses(&response));
            }
            codes
        }
    };
    let codes = run(|b, i| put_patient(&format!("c{b}-{i}"))).await;
    let conflicts = codes.iter().filter(|&&s| s == 409).count();
    assert!(conflicts > 0, "{codes:?}");
    assert_eq!(conflicts + codes.iter().filter(|&&s| s == 201).count(), 60);
    assert_eq!(
        sb.stats().conflicts.load(Ordering::Relaxed),
        conflicts as u64
    );
    sb.with_store(|st| assert_eq!(st.count("Patient"), 60 - conflicts));

    let codes = run(|b, i| post(patient(&format!("p{b}-{i}"), "P"))).await;
    assert!(codes.iter().all(|&s| s == 201), "{codes:?}");
    assert_eq!(
        sb.stats().conflicts.load(Ordering::Relaxed),
        conflicts as u64
    );

    // plain conditional PUTs conflict too: 409 for the request
    let (sb, c) = start(medplum(MedplumBehaviour {
        write_cost: Duration::from_millis(200),
        conflict_rate: 0.5,
        workers: 8,
        ..MedplumBehaviour::default()
    }))
    .await;
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let url = format!("Patient?identifier=http://s/p|solo{i}");
                c.send(Method::PUT, &url, Some(patient(&format!("solo{i}"), "S")))
                    .await
                    .0
            })
        })
        .collect();
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert!(codes.contains(&409), "{codes:?}");
    assert!(codes.iter().all(|s| [201, 409].contains(s)), "{codes:?}");
    let conflicts = sb.stats().conflicts.load(Ordering::Relaxed);
    assert_eq!(
        conflicts,
        codes.iter().filter(|&&s| s == 409).count() as u64
    );
}

/// A transaction whose middle entry fails: a Patient, an Observation with an
/// unresolvable conditional subject, an Observation linked by `urn:uuid`.
fn partial_transaction(value: &str) -> Value {
    let mut first = put_patient(value);
    first["fullUrl"] = json!("urn:uuid:p");
    bundle(
        "transaction",
        vec![
            first,
            post(observation("Patient?identifier=http://s/p|NOBODY")),
            post(observation("urn:uuid:p")),
        ],
    )
}

#[tokio::test]
async fn medplum_transactions_without_the_feature_run_like_batches_and_keep_what_worked() {
    let (sb, c) = start(medplum(MedplumBehaviour::default())).await;
    let (s, response) = c
        .send(Method::POST, "", Some(partial_transaction("T1")))
        .await;
    assert_eq!(s, 200);
    assert_eq!(response["type"], "transaction-response");
    assert_eq!(statuses(&response), [201, 400, 201]);
    sb.with_store(|st| {
        let patient = st.find("Patient", "http://s/p", "T1")[0];
        let observations = st.resources("Observation");
        assert_eq!(observations.len(), 1);
        assert_eq!(
            observations[0]["subject"]["reference"],
            format!("Patient/{}", patient["id"].as_str().unwrap())
        );
    });

    // nested in a batch as `POST /`: entry 200, the inner answer mixed
    let nested = json!({ "request": { "method": "POST", "url": "/" }, "resource": partial_transaction("T2") });
    let (s, response) = c
        .send(Method::POST, "", Some(bundle("batch", vec![nested])))
        .await;
    assert_eq!(s, 200);
    assert_eq!(statuses(&response), [200]);
    let inner = &response["entry"][0]["resource"];
    assert_eq!(inner["type"], "transaction-response");
    assert_eq!(statuses(inner), [201, 400, 201]);
    sb.with_store(|st| {
        assert_eq!(st.count("Patient"), 2);
        assert_eq!(st.count("Observation"), 2);
    });
}

#[tokio::test]
async fn medplum_transaction_bundles_are_atomic_with_the_8_and_50_limits() {
    let (sb, c) = start(medplum(MedplumBehaviour {
        transaction_bundles: true,
        ..MedplumBehaviour::default()
    }))
    .await;
    let conditional = |n: usize| {
        bundle(
            "transaction",
            (0..n).map(|i| put_patient(&format!("t{i}"))).collect(),
        )
    };
    let (s, outcome) = c.send(Method::POST, "", Some(conditional(9))).await;
    assert_eq!(s, 400);
    assert_eq!(
        issue(&outcome),
        "Transaction requires strict isolation but has too many entries"
    );
    let (s, response) = c.send(Method::POST, "", Some(conditional(8))).await;
    assert_eq!(s, 200);
    assert_eq!(statuses(&response), [201; 8]);

    let by_id = (0..51)
        .map(|i| json!({ "request": { "method": "PUT", "url": format!("Patient/x{i}") }, "resource": patient("u", "U") }))
        .collect();
    let (s, outcome) = c
        .send(Method::POST, "", Some(bundle("transaction", by_id)))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        issue(&outcome),
        "Transaction contains more update operations than allowed"
    );

    let (s, _) = c
        .send(Method::POST, "", Some(partial_transaction("T1")))
        .await;
    assert_eq!(s, 400, "atomic: one failure fails the whole");
    sb.with_store(|st| {
        assert_eq!(st.count("Patient"), 8);
        assert_eq!(st.count("Observation"), 0);
    });
}

#[tokio::test]
async fn medplum_resolved_conditional_references_get_a_display() {
    let (_sb, c) = start(medplum(MedplumBehaviour::default())).await;
    let named = |value: &str, name: Value| {
        let mut p = patient(value, "");
        p["name"] = name;
        p
    };
    let mut ids = Vec::new();
    for p in [
        named("A", json!([{ "given": ["Ann", "Bea"], "family": "Cee" }])),
        named("B", json!([{ "text": "Dr. Dee", "family": "X" }])),
        named("C", Value::Null),
    ] {
        let (s, created) = c.send(Method::POST, "Patient", Some(p)).await;
        assert_eq!(s, 201);
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let mut obs = observation("Patient?identifier=http://s/p|A");
    obs["performer"] = json!([
        { "reference": "Patient?identifier=http://s/p|B" },
        { "reference": "Patient?identifier=http://s/p|C" },
        { "reference": format!("Patient/{}", ids[0]) },
    ]);
    let (s, created) = c.send(Method::POST, "Observation", Some(obs)).await;
    assert_eq!(s, 201);
    let (_, read) = c
        .send(
            Method::GET,
            &format!("Observation/{}", created["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(
        read["subject"],
        json!({ "reference": format!("Patient/{}", ids[0]), "display": "Ann Bea Cee" })
    );
    assert_eq!(read["performer"][0]["display"], "Dr. Dee");
    assert_eq!(
        read["performer"][1]["display"],
        format!("Patient/{}", ids[2])
    );
    assert_eq!(
        read["performer"][2],
        json!({ "reference": format!("Patient/{}", ids[0]) }),
        "a plain reference is stored as sent"
    );
}

#[tokio::test]
async fn medplum_the_same_new_identifier_twice_in_a_batch_fails_the_second() {
    let (sb, c) = start(medplum(MedplumBehaviour::default())).await;
    let twice = || bundle("batch", vec![put_patient("DUP"), put_patient("DUP")]);
    let (_, response) = c.send(Method::POST, "", Some(twice())).await;
    assert_eq!(statuses(&response), [201, 400]);
    assert_eq!(
        issue(&response["entry"][1]["response"]["outcome"]),
        "Resource ID did not match resolved ID"
    );
    sb.with_store(|st| assert_eq!(st.count("Patient"), 1));
    // once it exists, both find it
    let (_, response) = c.send(Method::POST, "", Some(twice())).await;
    assert_eq!(statuses(&response), [200, 200]);
}

#[tokio::test]
async fn medplum_put_by_id_refuses_unknown_ids_and_stale_versions() {
    let (_sb, c) = start(medplum(MedplumBehaviour::default())).await;
    let (s, _) = c
        .send(Method::PUT, "Patient/nobody", Some(patient("n", "N")))
        .await;
    assert_eq!(s, 400);
    let (_, created) = c
        .send(Method::POST, "Patient", Some(patient("v", "V")))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut changed = patient("v", "W");
    changed["id"] = json!(id);
    let path = format!("Patient/{id}");
    let stale = c
        .call(
            Method::PUT,
            &path,
            Some(changed.clone()),
            &[("if-match", "W/\"2\"")],
        )
        .await;
    assert_eq!(
        (stale.status, issue(&stale.body)),
        (412, "Precondition Failed".to_owned())
    );
    let fresh = c
        .call(
            Method::PUT,
            &path,
            Some(changed.clone()),
            &[("if-match", "W/\"1\"")],
        )
        .await;
    assert_eq!(fresh.status, 200);
    let entry = json!({ "request": { "method": "PUT", "url": path, "ifMatch": "W/\"1\"" }, "resource": changed });
    let (_, response) = c
        .send(Method::POST, "", Some(bundle("batch", vec![entry])))
        .await;
    assert_eq!(statuses(&response), [412]);
}

/// Polls an async job until it is done: its AsyncJob.
async fn poll(c: &Client, status_url: &str) -> Value {
    for _ in 0..400 {
        let a = c.call(Method::GET, status_url, None, &[]).await;
        match a.status {
            202 => tokio::time::sleep(Duration::from_millis(25)).await,
            200 => return a.body,
            other => panic!("job status {other}: {}", a.body),
        }
    }
    panic!("the job did not finish");
}

#[tokio::test]
async fn medplum_async_batches_run_as_jobs_into_a_binary_and_wait_for_the_quota() {
    let (sb, c) = start(SandboxConfig {
        limits: Limits {
            // three writes per 300 ms: the job must wait twice
            quota: Some(Quota {
                units: 30,
                window: Duration::from_millis(300),
                write_cost: 10,
            }),
            ..Limits::default()
        },
        ..medplum(MedplumBehaviour::default())
    })
    .await;
    let entries = (0..7).map(|i| put_patient(&format!("j{i}"))).collect();
    let async_ = [("prefer", "respond-async")];
    let a = c
        .call(Method::POST, "", Some(bundle("batch", entries)), &async_)
        .await;
    assert_eq!(a.status, 202);
    assert_eq!(a.body["resourceType"], "OperationOutcome");
    let location = a.headers["content-location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("{}/job/", c.base)) && location.ends_with("/status"),
        "{location}"
    );
    let job = poll(&c, &location).await;
    assert_eq!(job["resourceType"], "AsyncJob");
    assert_eq!(job["status"], "completed");
    assert_eq!(job["output"]["parameter"][0]["name"], "results");
    let binary = job["output"]["parameter"][0]["valueReference"]["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(binary.starts_with("Binary/"));
    let a = c.call(Method::GET, &binary, None, &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["content-type"], "application/fhir+json");
    assert_eq!(a.body["type"], "batch-response");
    assert_eq!(statuses(&a.body), [201; 7]);
    assert_eq!(
        sb.stats().throttled.load(Ordering::Relaxed),
        0,
        "it waited instead"
    );
    sb.with_store(|st| assert_eq!(st.count("Patient"), 7));

    // not a batch: the job ends in error
    let a = c
        .call(Method::POST, "", Some(patient("x", "X")), &async_)
        .await;
    assert_eq!(a.status, 202);
    let job = poll(&c, a.headers["content-location"].to_str().unwrap()).await;
    assert_eq!(job["status"], "error");
    assert_eq!(job["output"]["parameter"][0]["name"], "error");
    assert!(job["output"]["parameter"][0]["valueString"].is_string());

    // with transaction-bundles, async transactions are refused
    let (_sb, c) = start(medplum(MedplumBehaviour {
        transaction_bundles: true,
        ..MedplumBehaviour::default()
    }))
    .await;
    let tx = bundle("transaction", vec![put_patient("a")]);
    let a = c.call(Method::POST, "", Some(tx.clone()), &async_).await;
    assert_eq!(a.status, 400);

    // a generic sandbox answers at once
    let (_sb, c) = start(SandboxConfig::default()).await;
    let a = c.call(Method::POST, "", Some(tx), &async_).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["type"], "transaction-response");
}

#[tokio::test]
async fn an_identifier_system_alone_finds_and_counts_the_whole_system() {
    let (_sb, c) = start(SandboxConfig::default()).await;
    for (system, value) in [("p", "1"), ("p", "2"), ("p", "3"), ("q", "1"), ("q", "2")] {
        let mut p = patient(value, value);
        p["identifier"][0]["system"] = json!(format!("http://s/{system}"));
        c.send(Method::POST, "Patient", Some(p)).await;
    }
    let count = |query: &'static str| {
        let c = c.clone();
        async move {
            let (s, b) = c.send(Method::GET, query, None).await;
            assert_eq!(s, 200);
            assert!(b.get("entry").is_none());
            b["total"].clone()
        }
    };
    assert_eq!(
        count("Patient?identifier=http://s/p|&_summary=count").await,
        3
    );
    assert_eq!(
        count("Patient?identifier=http://s/q%7C&_summary=count").await,
        2
    );
    assert_eq!(
        count("Patient?identifier=http://s/none|&_summary=count").await,
        0
    );
    let (_, found) = c
        .send(Method::GET, "Patient?identifier=http://s/q|", None)
        .await;
    assert_eq!(found["entry"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn post_search_takes_the_parameters_form_encoded() {
    let (sb, c) = start(SandboxConfig::default()).await;
    for v in ["a", "B,1|x", "c d"] {
        c.send(Method::POST, "Patient", Some(patient(v, v))).await;
    }
    let search = |identifier: String| {
        let c = c.clone();
        async move {
            let response = c
                .http
                .post(format!("{}/Patient/_search", c.base))
                .form(&[("identifier", identifier)])
                .send()
                .await
                .unwrap();
            answer(response).await
        }
    };
    let a = search(r"http://s/p|a,http://s/p|B\,1\|x,http://s/p|c d".to_owned()).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["total"], 3);
    // a list too long for a URL
    let long: Vec<String> = (0..500)
        .map(|i| format!("http://s/p|missing-{i:05}"))
        .collect();
    let a = search(format!("{},http://s/p|a", long.join(","))).await;
    assert_eq!(a.body["total"], 1);
    assert_eq!(
        a.body["entry"][0]["resource"]["identifier"][0]["value"],
        "a"
    );
    assert_eq!(sb.stats().searches.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn searches_page_in_a_stable_order_with_next_links() {
    let (sb, c) = start(SandboxConfig::default()).await;
    for i in 0..45 {
        c.send(
            Method::POST,
            "Patient",
            Some(patient(&format!("p{i:02}"), "P")),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut url = format!("{}/Patient?identifier=http://s/p|", c.base);
    let mut pages = Vec::new();
    loop {
        let (s, page) = c.send(Method::GET, &url, None).await;
        assert_eq!(s, 200);
        assert_eq!(page["total"], 45);
        let entries = page["entry"].as_array().unwrap();
        pages.push(entries.len());
        seen.extend(
            entries
                .iter()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_owned()),
        );
        let links = page["link"].as_array().unwrap();
        assert!(links.iter().any(|l| l["relation"] == "self"));
        match links.iter().find(|l| l["relation"] == "next") {
            Some(next) => url = next["url"].as_str().unwrap().to_owned(),
            None => break,
        }
    }
    assert_eq!(pages, [20, 20, 5], "20 a page by default");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "each once, in a stable order");
    assert_eq!(sb.stats().searches.load(Ordering::Relaxed), 3);

    let (_, page) = c
        .send(Method::GET, "Patient?_count=10&_offset=40", None)
        .await;
    let ids: Vec<&str> = page["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, seen[40..]);
    assert!(
        page["link"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["relation"] != "next")
    );
    let (_, all) = c.send(Method::GET, "Patient?_count=5000", None).await;
    assert_eq!(all["entry"].as_array().unwrap().len(), 45);
}
