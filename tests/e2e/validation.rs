//! What fhirlift sends is valid FHIR R4: the bundles the examples and the
//! built-in HL7v2 map produce (on the shared corpus of real messages)
//! are written with `--dry-run` and every resource in them is checked by
//! `fhirlift-fhir`'s validator against the R4 definitions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fhirlift_tests::{Outcome, fhirlift, scratch, workspace};

use crate::support::{corpus, corpus_migration};

/// Every resource of the request bundles under `dir`, with the file it is in.
fn resources(dir: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
    }
    let mut out = Vec::new();
    for file in files {
        let bundle: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            // a batch of transactions: the transactions' entries
            match entry["resource"]["entry"].as_array() {
                Some(inner) if entry["resource"]["resourceType"] == "Bundle" => {
                    out.extend(inner.iter().map(|e| (file.clone(), e["resource"].clone())));
                }
                _ => out.push((file.clone(), entry["resource"].clone())),
            }
        }
    }
    out
}

/// `fhirlift migrate -c CONFIG --dry-run DIR/out --rejects DIR/rejects.ndjson`:
/// the bundles' folder and the outcome.
fn dry_run(config: &Path, dir: &Path) -> (PathBuf, Outcome) {
    let out = dir.join("out");
    let run = fhirlift([
        "migrate".into(),
        "-c".into(),
        config.as_os_str().to_owned(),
        "--dry-run".into(),
        out.clone().into_os_string(),
        "--rejects".into(),
        dir.join("rejects.ndjson").into_os_string(),
    ]);
    (out, run)
}

/// Dry-runs `config`: how many resources it would send, and their issues
/// grouped by rule and location (with a count and the first of each).
fn issues_of_dry_run(config: &Path, name: &str) -> (usize, Vec<String>) {
    let dir = scratch(name);
    let (out, run) = dry_run(config, &dir);
    assert!(
        run.code == 0 || run.code == 2,
        "{}{}",
        run.stdout,
        run.stderr
    );
    let all = resources(&out);
    // rule and location → how many, and the first issue with its file
    let mut grouped: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (file, resource) in &all {
        for issue in fhirlift_fhir::validate(resource)
            .into_iter()
            .filter(fhirlift_fhir::Issue::is_error)
        {
            let slot = grouped
                .entry(format!("{} {}", issue.rule.name(), issue.location))
                .or_insert_with(|| (0, format!("{issue} (in {})", file.display())));
            slot.0 += 1;
        }
    }
    let lines = grouped
        .into_iter()
        .map(|(what, (n, first))| format!("{what}: {n}; first: {first}"))
        .collect();
    (all.len(), lines)
}

#[test]
fn the_examples_send_valid_r4() {
    // the PostgreSQL example: in `postgres::the_clinic_example_…` (it needs
    // a server); the fixed-width one: in `plugins::the_example_plugin_…`
    // (it needs the plugin built)
    for (example, at_least) in [("medplum-guide", 9), ("hl7v2", 10)] {
        let config = workspace()
            .join("examples")
            .join(example)
            .join("migration.yaml");
        let (resources, issues) = issues_of_dry_run(&config, &format!("validate-{example}"));
        assert!(resources >= at_least, "{example}: {resources} resources");
        assert!(issues.is_empty(), "{example}:\n{}", issues.join("\n"));
    }
}

#[test]
fn the_hl7v2_map_on_the_shared_corpus_sends_valid_r4() {
    let Some(corpus) = corpus() else {
        eprintln!("the shared corpus is not beside the workspace: skipped");
        return;
    };
    let dir = scratch("validate-corpus");
    let config = corpus_migration(&corpus, &dir);
    let (resources, issues) = issues_of_dry_run(&config, "validate-corpus-run");
    assert!(resources > 2000, "{resources} resources");
    assert!(issues.is_empty(), "{}", issues.join("\n"));
}

/// The guide example with two mistakes a new user makes: the source's
/// gender letter written as is (`F` is no code of administrative-gender),
/// and an Encounter status that is not one (`done`).
fn invalid_guide(dir: &Path, validate: Option<&str>) -> PathBuf {
    let example = workspace().join("examples/medplum-guide");
    let text = std::fs::read_to_string(example.join("migration.yaml")).unwrap();
    let text = text
        .replace(
            "gender: \"{{ gender | code(M='male', F='female', O='other', U='unknown') }}\"",
            "gender: \"{{ gender }}\"",
        )
        .replace("status: finished", "status: done");
    let text = match validate {
        Some(mode) => text.replacen("target:\n", &format!("target:\n  validate: {mode}\n"), 1),
        None => text,
    };
    assert!(text.contains("gender: \"{{ gender }}\"") && text.contains("status: done"));
    let config = dir.join("migration.yaml");
    std::fs::write(&config, text).unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for entry in std::fs::read_dir(example.join("data")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, data.join(path.file_name().unwrap())).unwrap();
    }
    config
}

#[test]
fn invalid_resources_are_rejected_before_sending_with_rule_and_place() {
    let dir = scratch("validate-reject");
    let config = invalid_guide(&dir, None);
    let check = fhirlift(["check".into(), "-c".into(), config.as_os_str().to_owned()]);
    // each issue names the mapping line that wrote the element
    let line_of = |text: &str| {
        let yaml = std::fs::read_to_string(&config).unwrap();
        1 + yaml.lines().position(|l| l.trim() == text).unwrap()
    };
    let at = |text: &str| format!("{}:{}:9", config.display(), line_of(text));
    for expected in [
        format!(
            "2  code-not-in-value-set Patient.gender at {} (first: patients.csv:2)",
            at("gender: \"{{ gender }}\"")
        ),
        format!(
            "2  code-not-in-value-set Encounter.status at {} (first: encounters.csv:2)",
            at("status: done")
        ),
    ] {
        assert!(
            check.stdout.contains(&expected),
            "{expected}\n{}",
            check.stdout
        );
    }
    assert!(
        check.stdout.contains("4 records would be rejected"),
        "{}",
        check.stdout
    );
    // a dry run sends none of them, and the rejects file says why
    let rejects = dir.join("rejects.ndjson");
    let (out, run) = dry_run(&config, &dir);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    let sent: Vec<String> = resources(&out)
        .iter()
        .map(|(_, r)| r["resourceType"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        !sent.iter().any(|t| t == "Patient" || t == "Encounter"),
        "{sent:?}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&rejects)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines.iter().all(|l| l["stage"] == "validate"), "{lines:?}");
    assert!(
        lines[0]["reason"]
            .as_str()
            .unwrap()
            .contains("Patient.gender [code-not-in-value-set]"),
        "{lines:?}"
    );
    // the logs name the rule's place, never the value
    assert!(!run.stderr.contains("\"F\""), "{}", run.stderr);
}

#[test]
fn under_warn_invalid_resources_are_sent_and_counted() {
    let dir = scratch("validate-warn");
    let config = invalid_guide(&dir, Some("warn"));
    let (out, run) = dry_run(&config, &dir);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(resources(&out).len(), 9);
    assert!(
        run.stdout
            .contains("not valid FHIR R4 2: records with an invalid resource"),
        "{}",
        run.stdout
    );
}

#[test]
fn preview_shows_the_issues_under_each_resource() {
    let dir = scratch("validate-preview");
    let config = invalid_guide(&dir, None);
    let preview = fhirlift([
        "preview".into(),
        "-c".into(),
        config.into_os_string(),
        "--stream".into(),
        "patients".into(),
    ]);
    assert!(
        preview.stdout.contains(
            "Patient.gender [code-not-in-value-set]: not a code of http://hl7.org/fhir/ValueSet/administrative-gender"
        ),
        "{}",
        preview.stdout
    );
    assert!(preview.stdout.contains("\"issues\""), "{}", preview.stdout);
}
