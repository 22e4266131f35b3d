//! The planner's tests: phases, packing, splitting, request order.

use super::*;
use crate::group::ResourceJson;

fn deps(name: &str, emits: &[&str], refs: &[&str]) -> StreamDeps {
    StreamDeps {
        name: name.into(),
        emitted_types: emits.iter().map(|s| s.to_string()).collect(),
        referenced_types: refs.iter().map(|s| s.to_string()).collect(),
        pos: None,
        after: vec![],
    }
}

#[test]
fn references_order_streams_into_phases() {
    let p = phases(&[
        deps(
            "encounters",
            &["Encounter", "ClinicalImpression"],
            &["Patient"],
        ),
        deps("conditions", &["Condition"], &["Patient"]),
        deps("patients", &["Patient"], &[]),
    ])
    .unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(p[0].streams, vec!["patients"]);
    assert_eq!(p[1].streams, vec!["encounters", "conditions"]);
}

#[test]
fn a_cycle_is_an_error_that_names_its_streams() {
    let err = phases(&[
        deps("a", &["Patient"], &["Practitioner"]),
        deps("b", &["Practitioner"], &["Patient"]),
        deps("c", &["Condition"], &[]),
    ])
    .unwrap_err();
    assert!(
        err.contains("a references Practitioner written by b"),
        "{err}"
    );
    assert!(err.contains("b references Patient written by a"), "{err}");
}

fn single(key: &str, value: &str, pad: usize) -> WriteGroup {
    let identity = Identity {
        resource_type: "Patient".into(),
        system: "http://s".into(),
        value: value.into(),
    };
    WriteGroup {
        stream: Arc::from("p"),
        key: key.into(),
        provenance: Provenance::File {
            file: Arc::from("p.csv"),
            line: 2,
        },
        atomic: false,
        may_split: false,
        seq: 0,
        operations: vec![Operation::update_on(
            identity,
            None,
            ResourceJson::from_value(
                &serde_json::json!({"resourceType": "Patient", "note": "x".repeat(pad)}),
            ),
        )],
    }
}

fn pack(profile: ServerProfile, groups: Vec<WriteGroup>) -> (Vec<Request>, Vec<PlanError>) {
    let mut packer = Packer::new(profile, 1, Arc::from("p"));
    let mut requests = Vec::new();
    let mut errors = Vec::new();
    for g in groups {
        if let Err(e) = packer.push(g, &mut |r| requests.push(r)) {
            errors.push(e);
        }
    }
    packer.finish(&mut |r| requests.push(r));
    (requests, errors)
}

#[test]
fn batches_are_bounded_by_entries_and_bytes_and_parse_as_json() {
    let mut profile = ServerProfile::named("medplum").unwrap();
    profile.max_batch_entries = 3;
    let groups = (0..7)
        .map(|i| single(&i.to_string(), &format!("P{i}"), 10))
        .collect();
    let (reqs, errs) = pack(profile.clone(), groups);
    assert!(errs.is_empty());
    assert_eq!(
        reqs.iter().map(|r| r.entries.len()).collect::<Vec<_>>(),
        vec![3, 3, 1]
    );
    for r in &reqs {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["entry"].as_array().unwrap().len(), r.entries.len());
        for e in &r.entries {
            let entry: serde_json::Value =
                serde_json::from_slice(&r.body[e.range.clone()]).unwrap();
            assert_eq!(entry["request"]["method"], "PUT");
        }
        let again: serde_json::Value = serde_json::from_slice(&r.subset(&[0]).body).unwrap();
        assert_eq!(again["entry"].as_array().unwrap().len(), 1);
    }
    profile.max_batch_entries = 100;
    profile.max_body_bytes = 1000;
    let groups = (0..10)
        .map(|i| single(&i.to_string(), &format!("P{i}"), 200))
        .collect();
    let (reqs, _) = pack(profile.clone(), groups);
    assert!(reqs.len() > 1);
    assert!(
        reqs.iter().all(|r| r.body.len() <= 1000),
        "{:?}",
        reqs.iter().map(|r| r.body.len()).collect::<Vec<_>>()
    );
    let (reqs, errs) = pack(
        profile,
        vec![single("big", "P1", 2000), single("ok", "P2", 1)],
    );
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0]
            .message
            .contains("over the medplum profile's request limit"),
        "{}",
        errs[0].message
    );
    assert_eq!(reqs.len(), 1);
}

#[test]
fn the_same_identifier_never_shares_a_batch() {
    let profile = ServerProfile::named("medplum").unwrap();
    let (reqs, _) = pack(
        profile,
        vec![
            single("1", "P1", 1),
            single("2", "P2", 1),
            single("3", "P1", 1),
        ],
    );
    assert_eq!(
        reqs.iter().map(|r| r.entries.len()).collect::<Vec<_>>(),
        vec![2, 1]
    );
}

#[test]
fn oversized_conditional_transactions_are_refused_under_medplum() {
    let mut g = single("1", "P1", 1);
    g.atomic = true;
    let op = g.operations[0].clone();
    g.operations = (0..9).map(|_| op.clone()).collect();
    let mut medplum = ServerProfile::named("medplum").unwrap();
    medplum.strategy = crate::profile::WriteStrategy::Conditional;
    let (reqs, errs) = pack(medplum.clone(), vec![g.clone()]);
    assert!(reqs.is_empty());
    assert!(errs[0].message.contains("allows 8"), "{}", errs[0].message);
    // resolved, the same transaction writes by id: no strict isolation
    medplum.strategy = crate::profile::WriteStrategy::Resolve;
    let (reqs, errs) = pack(medplum, vec![g.clone()]);
    assert!(errs.is_empty());
    assert_eq!(reqs[0].kind, RequestKind::BatchOfTransactions);
    let (reqs, errs) = pack(ServerProfile::named("generic").unwrap(), vec![g]);
    assert!(errs.is_empty());
    assert_eq!(reqs[0].kind, RequestKind::Transaction);
    // resending a lone transaction resends it whole, still a transaction
    let again = reqs[0].subset(&[0]);
    assert_eq!(again.body, reqs[0].body);
    assert_eq!(again.kind, RequestKind::Transaction);
}

fn linked(name: &str, refers_to: &[&str]) -> Operation {
    let identity = Identity {
        resource_type: "Observation".into(),
        system: "http://s".into(),
        value: name.into(),
    };
    let refs: Vec<serde_json::Value> = refers_to
        .iter()
        .map(|t| serde_json::json!({ "reference": format!("urn:uuid:{t}") }))
        .collect();
    Operation::update_on(
        identity,
        Some(format!("urn:uuid:{name}")),
        ResourceJson::from_value(
            &serde_json::json!({ "resourceType": "Observation", "hasMember": refs }),
        ),
    )
}

#[test]
fn referenced_operations_come_first_and_cycles_keep_their_order() {
    let ops = vec![
        linked("report", &["a", "b"]),
        linked("a", &["patient"]),
        linked("patient", &[]),
        linked("b", &["patient"]),
        linked("x", &["y"]),
        linked("y", &["x"]),
    ];
    let order: Vec<String> = referenced_first(ops)
        .into_iter()
        .map(|o| o.identity.unwrap().value)
        .collect();
    assert_eq!(order, ["patient", "a", "b", "report", "x", "y"]);
}

#[test]
fn a_split_group_refers_across_parts_by_identifier() {
    let mut profile = ServerProfile::named("generic").unwrap();
    profile.max_transaction_entries = 2;
    profile.max_conditional_transaction_entries = 2;
    let mut packer = Packer::new(profile, 1, Arc::from("labs"));
    let mut group = single("k", "patient", 0);
    group.atomic = true;
    group.may_split = true;
    group.operations = vec![
        linked("report", &["a", "b"]),
        linked("a", &[]),
        linked("b", &[]),
    ];
    let mut requests = Vec::new();
    packer.push(group, &mut |r| requests.push(r)).unwrap();
    packer.finish(&mut |r| requests.push(r));
    assert_eq!(requests.len(), 2);
    let second = String::from_utf8(requests[1].body.clone()).unwrap();
    assert!(
        second.contains("Observation?identifier=http://s|a"),
        "{second}"
    );
    assert!(!second.contains("urn:uuid:a"), "{second}");
    // the parts share an identity: the sender writes them one after the other
    let shared: Vec<&u64> = requests[0]
        .identities
        .iter()
        .filter(|i| requests[1].identities.contains(i))
        .collect();
    assert_eq!(shared.len(), 1);
}

/// Regression: under a profile without nested transactions a lone
/// transaction left at once while an earlier record's single write of the
/// same identity waited in the open batch: the server got them in the
/// wrong order (an ADT^A41 overwrote the later A60's Patient) and every
/// re-run wrote them again.
#[test]
fn a_transaction_never_overtakes_an_earlier_write_of_its_identity() {
    let earlier = single("1", "P1", 1);
    let other = single("2", "P2", 1);
    let mut later = single("3", "P1", 1);
    later.atomic = true;
    later.operations.push(linked("obs", &[]));
    let (reqs, errs) = pack(
        ServerProfile::named("generic").unwrap(),
        vec![earlier, other, later],
    );
    assert!(errs.is_empty());
    assert_eq!(
        reqs.iter().map(|r| r.kind).collect::<Vec<_>>(),
        vec![RequestKind::Batch, RequestKind::Transaction]
    );
    assert_eq!(reqs[0].entries.len(), 2);
    // without a shared identity the batch keeps filling
    let mut unrelated = single("4", "P9", 1);
    unrelated.atomic = true;
    unrelated.operations.push(linked("obs2", &[]));
    let (reqs, _) = pack(
        ServerProfile::named("generic").unwrap(),
        vec![single("1", "P1", 1), unrelated, single("5", "P5", 1)],
    );
    assert_eq!(
        reqs.iter().map(|r| r.kind).collect::<Vec<_>>(),
        vec![RequestKind::Transaction, RequestKind::Batch]
    );
}
