//! Helpers shared by the modules that send migrations to a sandbox.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use fhirlift_tests::{Outcome, fhirlift};
use serde_json::Value;

/// `fhirlift migrate -c CONFIG --server URL`, with the rejects file, the
/// JSON report and the ledger in `dir`.
pub fn migrate(config: &Path, url: &str, dir: &Path, extra: &[&str]) -> Outcome {
    let mut args: Vec<OsString> = vec![
        "migrate".into(),
        "-c".into(),
        config.into(),
        "--server".into(),
        url.into(),
        "--rejects".into(),
        dir.join("rejects.ndjson").into(),
        "--report".into(),
        dir.join("report.json").into(),
        "--state".into(),
        dir.join("fhirlift.state").into(),
    ];
    args.extend(extra.iter().map(Into::into));
    fhirlift(args)
}

/// The JSON report of the last run in `dir`.
pub fn report(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

/// Sums one outcome over every stream and resource type of a report.
pub fn total(report: &Value, outcome: &str) -> u64 {
    report["streams"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["written"].as_object().unwrap().values())
        .map(|c| c[outcome].as_u64().unwrap())
        .sum()
}

/// The id of the one stored resource holding the identifier.
pub fn id_of(
    store: &fhirlift_sandbox::Store,
    resource_type: &str,
    system: &str,
    value: &str,
) -> String {
    let found = store.find(resource_type, system, value);
    assert_eq!(
        found.len(),
        1,
        "{resource_type} {value} stored exactly once"
    );
    found[0]["id"].as_str().unwrap().to_owned()
}

/// The shared corpus of real HL7 v2 messages and Synthea exports:
/// `$FHIRLIFT_CORPUS`, else `../shared/corpus` beside the workspace.
pub fn corpus() -> Option<PathBuf> {
    [
        std::env::var_os("FHIRLIFT_CORPUS").map(PathBuf::from),
        Some(fhirlift_tests::workspace().join("../shared/corpus")),
        Some("/work/shared/corpus".into()),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.join("hl7v2").is_dir())
}

/// A migration file in `dir` that reads every archive of the corpus with
/// the built-in HL7v2 map.
pub fn corpus_migration(corpus: &Path, dir: &Path) -> PathBuf {
    let config = dir.join("migration.yaml");
    std::fs::write(
        &config,
        format!(
            "source:\n  connector: hl7v2\n  path: {}\nstreams:\n  messages:\n    from: hl7v2/**/*.hl7\n    map:\n      builtin: hl7v2\n      default_authority: urn:example:corpus\n",
            corpus.display()
        ),
    )
    .unwrap();
    config
}
