//! Generated data at volume: bundles stay within the profile's limits and
//! every source identifier is planned exactly once.

use std::collections::HashSet;

use fhirlift_tests::{datagen, fhirlift, scratch};

#[test]
fn generated_patients_are_planned_once_each_within_medplum_limits() {
    let dir = scratch("volume");
    let counts = datagen::write_example(&dir, 3000, 7).unwrap();
    let out = dir.join("out");
    let result = fhirlift([
        "migrate".into(),
        "-c".into(),
        dir.join("migration.yaml").into_os_string(),
        "--dry-run".into(),
        out.clone().into_os_string(),
    ]);
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);

    let mut seen = HashSet::new();
    let mut transactions = 0;
    for phase in ["phase-1", "phase-2"] {
        for file in std::fs::read_dir(out.join(phase)).unwrap() {
            let bytes = std::fs::read(file.unwrap().path()).unwrap();
            assert!(bytes.len() <= 1_000_000, "medplum: at most 1 MB a request");
            let bundle: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let entries = bundle["entry"].as_array().unwrap();
            assert!(
                entries.len() <= 100,
                "medplum profile: at most 100 entries a batch"
            );
            let mut in_this_bundle = HashSet::new();
            for entry in entries {
                let inner: Vec<&serde_json::Value> =
                    match entry["resource"]["resourceType"].as_str() {
                        Some("Bundle") => {
                            transactions += 1;
                            assert_eq!(entry["request"]["url"], "/");
                            entry["resource"]["entry"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .collect()
                        }
                        _ => vec![entry],
                    };
                for e in inner {
                    let url = e["request"]["url"].as_str().unwrap().to_owned();
                    assert_eq!(e["request"]["method"], "PUT");
                    assert!(
                        in_this_bundle.insert(url.clone()),
                        "one identifier twice in one bundle: {url}"
                    );
                    assert!(seen.insert(url.clone()), "planned twice: {url}");
                }
            }
        }
    }
    let expected = counts.patients + counts.conditions + 2 * counts.encounters;
    assert_eq!(seen.len() as u64, expected);
    assert_eq!(transactions as u64, counts.encounters);
}
