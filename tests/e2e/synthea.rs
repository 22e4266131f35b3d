//! The Synthea CSV export of the shared corpus, mapped by
//! `examples/synthea/migration.yaml`: every resource is valid R4, the
//! export migrates into the sandbox with no reject and a re-run sends
//! nothing, repeated provider ids are handled as the example says, and a
//! copy of the mapping with one typo per kind of mistake gives exactly
//! those issues, each at the mapping line that holds the typo.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fhirlift_tests::{Outcome, fhirlift, scratch, workspace};

use crate::support::corpus;

/// The example mapping with `edit` applied, reading the corpus's export.
fn synthea_migration(corpus: &Path, dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let example = workspace().join("examples/synthea/migration.yaml");
    let text = std::fs::read_to_string(example).unwrap();
    let export = corpus.join("synthea-csv/OHDSI__dbt-synthea/seeds/synthea");
    let text = text.replacen(
        "  path: data/\n",
        &format!("  path: {}/\n", export.display()),
        1,
    );
    let config = dir.join("migration.yaml");
    std::fs::write(&config, edit(text)).unwrap();
    config
}

fn check(config: &Path) -> Outcome {
    fhirlift(["check".into(), "-c".into(), config.as_os_str().to_owned()])
}

/// The issue lines of `check`'s summary (`rule place at file:line:column`),
/// errors and information apart.
fn issue_lines(stdout: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut errors, mut information) = (BTreeSet::new(), BTreeSet::new());
    let mut in_information = false;
    for line in stdout.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("not valid FHIR R4") {
            in_information = false;
        } else if trimmed.starts_with("information (sent all the same)") {
            in_information = true;
        }
        // "      27  advisory-binding Patient.identifier[].type at F:70:13 (first: …)"
        let Some((count, rest)) = trimmed.split_once("  ") else {
            continue;
        };
        if count.parse::<u64>().is_err() || !rest.contains(" at ") {
            continue;
        }
        let issue = rest.split(" (first: ").next().unwrap_or(rest).to_owned();
        if in_information {
            information.insert(issue);
        } else {
            errors.insert(issue);
        }
    }
    (errors, information)
}

/// The lines (0-based, end exclusive) that map `stream`: from its
/// `  name:` line to the next line indented by exactly two spaces.
fn stream_lines(text: &str, stream: &str) -> std::ops::Range<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let header = format!("  {stream}:");
    let start = lines
        .iter()
        .position(|l| *l == header)
        .unwrap_or_else(|| panic!("no stream {stream}"));
    let end = (start + 1..lines.len())
        .find(|&i| lines[i].starts_with("  ") && !lines[i].starts_with("   "))
        .unwrap_or(lines.len());
    start..end
}

/// `file:line:column` of the only line of `stream`'s mapping in `config`
/// that is `text` (after its indentation and a list's `- `): the place
/// `check` quotes for an element written there.
fn place(config: &Path, stream: &str, text: &str) -> String {
    let yaml = std::fs::read_to_string(config).unwrap();
    let lines: Vec<&str> = yaml.lines().collect();
    let found: Vec<usize> = stream_lines(&yaml, stream)
        .filter(|&i| {
            let l = lines[i].trim_start();
            l == text || l.strip_prefix("- ") == Some(text)
        })
        .collect();
    assert_eq!(found.len(), 1, "{text:?} is not one line of {stream}");
    let line = lines[found[0]];
    let column = 1 + line.rfind(text).unwrap();
    format!("{}:{}:{column}", config.display(), found[0] + 1)
}

/// Replaces `from` by `to` (once) in the part of `text` that maps `stream`.
fn in_stream(text: &str, stream: &str, from: &str, to: &str) -> String {
    let range = stream_lines(text, stream);
    let lines: Vec<&str> = text.lines().collect();
    let part = lines[range.clone()].join("\n") + "\n";
    assert!(part.contains(from), "{stream} has no {from:?}");
    let mut out: Vec<String> = lines[..range.start].iter().map(|l| l.to_string()).collect();
    out.push(part.replacen(from, to, 1).trim_end_matches('\n').to_owned());
    out.extend(lines[range.end..].iter().map(|l| l.to_string()));
    out.join("\n") + "\n"
}

#[test]
fn the_synthea_export_maps_to_valid_r4() {
    let Some(corpus) = corpus() else {
        eprintln!("the shared corpus is not beside the workspace: skipped");
        return;
    };
    let dir = scratch("synthea-valid");
    let config = synthea_migration(&corpus, &dir, |text| text);
    let run = check(&config);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let (errors, information) = issue_lines(&run.stdout);
    assert!(errors.is_empty(), "{errors:?}\n{}", run.stdout);
    // Synthea's SSN identifier type (SS) is outside R4's extensible
    // identifier-type value set: said, not refused
    assert_eq!(
        information,
        BTreeSet::from([format!(
            "advisory-binding Patient.identifier[].type at {}",
            place(&config, "patients", "type:")
        )]),
        "{}",
        run.stdout
    );
    for expected in [
        "organizations                63         0         0",
        "providers                   166         0         0",
        "patients                     27         0         0",
        "encounters                  604         0         0",
        "conditions                  438         0         0",
        "observations                990         0         0",
        "immunizations                29         0         0",
        "procedures                  249         0         0",
        "3228 resources planned",
    ] {
        assert!(run.stdout.contains(expected), "{expected}\n{}", run.stdout);
    }
}

/// The export into the sandbox: every record accounted for, none
/// rejected, and a re-run sends nothing. Then a copy whose providers.csv
/// repeats ids, as real exports do: a repeat with the same mapped content
/// is skipped, one with another address is written after the first (the
/// last row wins), and nothing is rejected.
#[test]
fn the_synthea_export_migrates_with_no_reject_and_repeated_provider_ids_are_handled() {
    let Some(corpus) = corpus() else {
        eprintln!("the shared corpus is not beside the workspace: skipped");
        return;
    };
    let dir = scratch("synthea-migrate");
    let export = corpus.join("synthea-csv/OHDSI__dbt-synthea/seeds/synthea");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for entry in std::fs::read_dir(&export).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, data.join(path.file_name().unwrap())).unwrap();
    }
    let text =
        std::fs::read_to_string(workspace().join("examples/synthea/migration.yaml")).unwrap();
    let config = dir.join("migration.yaml");
    std::fs::write(&config, text).unwrap();
    let run = || crate::rerun::migrate_into_store_with(&config, &dir, &[]);
    let first = run();
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    let r = crate::support::report(&dir);
    let total = |o: &str| crate::support::total(&r, o);
    assert_eq!(total("created"), 3228, "{}", first.stdout);
    assert_eq!(total("rejected"), 0, "{}", first.stdout);
    let again = run();
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert_eq!(
        crate::support::report(&dir)["traffic"]["writes"],
        0,
        "{}",
        again.stdout
    );

    // two more rows for the first provider: the same, and moved
    let providers = data.join("providers.csv");
    let csv = std::fs::read_to_string(&providers).unwrap();
    let first_row = csv.lines().nth(1).unwrap().to_owned();
    let id = first_row.split(',').next().unwrap().to_owned();
    let stored_address = |dir: &Path| {
        crate::rerun::stored(dir, "Practitioner")
            .into_values()
            .find(|p| p["identifier"][0]["value"] == id.as_str())
            .unwrap()["address"][0]["city"]
            .clone()
    };
    let city_before = stored_address(&dir);
    let city = city_before.as_str().unwrap().to_owned();
    let moved = first_row.replacen(&format!(",{city},"), ",Springfield,", 1);
    assert_ne!(moved, first_row, "the row names its city");
    std::fs::write(&providers, format!("{csv}{first_row}\n{moved}\n")).unwrap();
    let repeated = run();
    assert_eq!(repeated.code, 0, "{}{}", repeated.stdout, repeated.stderr);
    let r = crate::support::report(&dir);
    assert_eq!(
        crate::support::total(&r, "rejected"),
        0,
        "{}",
        repeated.stdout
    );
    assert!(
        repeated
            .stdout
            .contains("skipped 1: repeats an earlier record (same key, same content)")
            && repeated.stdout.contains("repeated keys 1"),
        "{}",
        repeated.stdout
    );
    assert_eq!(stored_address(&dir), "Springfield", "the last row wins");
}

/// One mistake per kind, as new users make them: (stream, text, typo).
/// `empty` and `unresolved-reference` have none: templates drop empty
/// values, and a `local()` name is checked when the mapping is read (a
/// urn:uuid left unresolved needs a named entry skipped by its `when:`,
/// a slip of logic that the validator's unit table covers).
const TYPOS: &[(&str, &str, &str)] = &[
    (
        "immunizations",
        "resourceType: Immunization",
        "resourceType: Immunisation",
    ),
    ("observations", "valueString:", "valueStrng:"),
    (
        "observations",
        "value: \"= VALUE | float\"",
        "value: \"{{ VALUE }}\"",
    ),
    (
        "conditions",
        "onsetDateTime: \"{{ START | fhir_date }}\"",
        "onsetDateTime: \"{{ START }}T00:00\"",
    ),
    ("medications", "        intent: order\n", ""),
    (
        "encounters",
        "        type:\n          - coding:\n              - system: \"{{ snomed }}\"\n                code: \"{{ CODE }}\"\n                display: \"{{ DESCRIPTION }}\"\n            text: \"{{ DESCRIPTION }}\"\n",
        "        type:\n          coding:\n            - system: \"{{ snomed }}\"\n              code: \"{{ CODE }}\"\n          text: \"{{ DESCRIPTION }}\"\n",
    ),
    ("procedures", "status: completed", "status: complete"),
    (
        "encounters",
        "individual: \"= ref('Practitioner', synthea ~ '/provider', PROVIDER)\"",
        "individual: \"= ref('Organization', synthea ~ '/organization', ORGANIZATION)\"",
    ),
    // information, not an error: outside condition-category (extensible)
    ("conditions", "code: encounter-diagnosis", "code: diagnosis"),
];

#[test]
fn one_typo_per_kind_gives_exactly_those_issues_at_their_lines() {
    let Some(corpus) = corpus() else {
        eprintln!("the shared corpus is not beside the workspace: skipped");
        return;
    };
    let dir = scratch("synthea-typos");
    let config = synthea_migration(&corpus, &dir, |text| {
        TYPOS.iter().fold(text, |text, (stream, from, to)| {
            in_stream(&text, stream, from, to)
        })
    });
    let run = check(&config);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    let (errors, information) = issue_lines(&run.stdout);
    let at = |stream: &str, text: &str| place(&config, stream, text);
    let expected_errors = BTreeSet::from([
        format!(
            "unknown-resource-type resource.resourceType at {}",
            at("immunizations", "resourceType: Immunisation")
        ),
        format!(
            "unknown-element Observation.valueStrng at {}",
            at("observations", "valueStrng: \"{{ VALUE }}\"")
        ),
        format!(
            "wrong-type Observation.valueQuantity.value at {}",
            at("observations", "value: \"{{ VALUE }}\"")
        ),
        format!(
            "bad-format Condition.onsetDateTime at {}",
            at("conditions", "onsetDateTime: \"{{ START }}T00:00\"")
        ),
        // a missing element: the entry that should have written it
        format!(
            "required MedicationRequest.intent at {}",
            at("medications", "resourceType: MedicationRequest")
        ),
        format!(
            "cardinality Encounter.type at {}",
            at("encounters", "type:")
        ),
        format!(
            "code-not-in-value-set Procedure.status at {}",
            at("procedures", "status: complete")
        ),
        format!(
            "reference-target Encounter.participant[].individual.reference at {}",
            at(
                "encounters",
                "individual: \"= ref('Organization', synthea ~ '/organization', ORGANIZATION)\""
            )
        ),
    ]);
    assert_eq!(errors, expected_errors, "{}", run.stdout);
    // a code outside an extensible binding is information, not an error
    let category = information
        .iter()
        .find(|i| i.starts_with("advisory-binding Condition.category[] at "));
    assert!(category.is_some(), "{information:?}");
    // every record with an error is rejected, no other
    for expected in [
        "immunizations                29        29",
        "medications                 663       663",
        "procedures                  249       249",
        "encounters                  604       604",
        "conditions                  438       438",
        "observations                990       990",
        "patients                     27         0",
    ] {
        assert!(run.stdout.contains(expected), "{expected}\n{}", run.stdout);
    }
}
