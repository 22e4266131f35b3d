//! The command line: connectors, check, preview and their exit codes.

use std::ffi::OsString;

use fhirlift_tests::{fhirlift, guide_example};

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

#[test]
fn connectors_lists_the_built_in_csv_connector() {
    let run = fhirlift(args(&["connectors"]));
    assert_eq!(run.code, 0);
    let csv = run
        .stdout
        .lines()
        .find(|l| l.starts_with("csv "))
        .expect("csv is listed");
    assert!(csv.contains("built-in"), "{csv}");
}

#[test]
fn check_prints_phases_in_reference_order_and_counts_requests() {
    let mut a = args(&["check", "-c"]);
    a.push(guide_example().into());
    let run = fhirlift(a);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let phase1 = run.stdout.find("phase 1:").unwrap();
    let phase2 = run.stdout.find("phase 2:").unwrap();
    let patients = run.stdout.find("  patients:").unwrap();
    let conditions = run.stdout.find("  conditions:").unwrap();
    assert!(
        phase1 < patients && patients < phase2 && phase2 < conditions,
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("lookup condition (2 rows)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("9 resources planned in 3 requests, 0 records rejected"),
        "{}",
        run.stdout
    );
}

#[test]
fn preview_shows_mapped_resources_without_writing_anything() {
    let mut a = args(&["preview", "-c"]);
    a.push(guide_example().into());
    a.extend(args(&["--stream", "conditions", "--limit", "1"]));
    let run = fhirlift(a);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    assert_eq!(json["record"], "patient_conditions.csv:2");
    let write = &json["writes"][0];
    assert_eq!(
        write["request"]["url"],
        "Condition?identifier=http://your-source-system.com/patientConditionId|PC001"
    );
    assert_eq!(
        write["resource"]["code"]["coding"][1]["display"],
        "Essential (primary) hypertension"
    );
}

#[test]
fn an_unknown_stream_or_connector_is_a_clear_error() {
    let mut a = args(&["preview", "-c"]);
    a.push(guide_example().into());
    a.extend(args(&["--stream", "vitals"]));
    let run = fhirlift(a);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("no stream \"vitals\"; streams: patients, conditions, encounters"),
        "{}",
        run.stderr
    );
}

#[test]
fn sending_without_dry_run_says_what_to_do_instead() {
    let mut a = args(&["migrate", "-c"]);
    a.push(guide_example().into());
    let run = fhirlift(a);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("--dry-run DIR"), "{}", run.stderr);
}
