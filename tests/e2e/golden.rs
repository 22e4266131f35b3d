//! The dry run of the bundled example equals the Medplum guide's bundles.

use std::collections::HashMap;

use fhirlift_tests::{fhirlift, guide_example, scratch, workspace};
use serde_json::Value;

/// Replaces each distinct `urn:uuid:…` by its order of first appearance.
fn normalise_uuids(value: &mut Value, seen: &mut HashMap<String, usize>) {
    match value {
        Value::String(s) if s.starts_with("urn:uuid:") => {
            let n = seen.len();
            let n = *seen.entry(s.clone()).or_insert(n);
            *s = format!("urn:uuid:#{n}");
        }
        Value::Array(items) => items.iter_mut().for_each(|v| normalise_uuids(v, seen)),
        Value::Object(map) => map.values_mut().for_each(|v| normalise_uuids(v, seen)),
        _ => {}
    }
}

/// fhirlift makes the guide's ClinicalImpression idempotent: undo just that.
fn as_the_guide_writes_clinical_impressions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let is_ci = map
                .get("resource")
                .and_then(|r| r.get("resourceType"))
                .is_some_and(|t| t == "ClinicalImpression");
            if is_ci {
                let resource = map
                    .get_mut("resource")
                    .and_then(Value::as_object_mut)
                    .unwrap();
                let identifier = resource
                    .shift_remove("identifier")
                    .expect("fhirlift derives an identifier");
                assert_eq!(
                    identifier[0]["system"],
                    "http://your-source-system.com/encounterNoteId"
                );
                let request = &map["request"];
                assert_eq!(request["method"], "PUT");
                assert!(
                    request["url"]
                        .as_str()
                        .unwrap()
                        .starts_with("ClinicalImpression?identifier=")
                );
                map["request"] =
                    serde_json::json!({ "method": "POST", "url": "ClinicalImpression" });
            }
            map.values_mut()
                .for_each(as_the_guide_writes_clinical_impressions);
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(as_the_guide_writes_clinical_impressions),
        _ => {}
    }
}

fn read(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn dry_run_of_the_example_equals_the_guides_bundles() {
    let out = scratch("golden");
    let run = fhirlift(["migrate", "-c"].map(Into::into).into_iter().chain([
        guide_example().into_os_string(),
        "--dry-run".into(),
        out.clone().into_os_string(),
    ]));
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let golden = workspace().join("tests/golden/medplum-guide");
    let pairs = [
        ("phase-1/000001-patients.json", "patients.json"),
        ("phase-2/000001-conditions.json", "conditions.json"),
        ("phase-2/000002-encounters.json", "encounters.json"),
    ];
    for (ours, theirs) in pairs {
        let mut got = read(&out.join(ours));
        let mut want = read(&golden.join(theirs));
        as_the_guide_writes_clinical_impressions(&mut got);
        normalise_uuids(&mut got, &mut HashMap::new());
        normalise_uuids(&mut want, &mut HashMap::new());
        assert_eq!(
            got,
            want,
            "{ours} differs from the guide's {theirs}:\n{}",
            serde_json::to_string_pretty(&got).unwrap()
        );
    }
    let phases: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(Result::ok)
        .collect();
    assert_eq!(phases.len(), 2, "two phases and no rejects file");
}

#[test]
fn dry_runs_are_reproducible_byte_for_byte() {
    let (a, b) = (scratch("repro-a"), scratch("repro-b"));
    for dir in [&a, &b] {
        let run = fhirlift([
            "migrate".into(),
            "-c".into(),
            guide_example().into_os_string(),
            "--dry-run".into(),
            dir.clone().into_os_string(),
        ]);
        assert_eq!(run.code, 0);
    }
    let file = "phase-2/000002-encounters.json";
    assert_eq!(
        std::fs::read(a.join(file)).unwrap(),
        std::fs::read(b.join(file)).unwrap()
    );
}
