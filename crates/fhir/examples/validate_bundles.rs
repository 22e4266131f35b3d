//! Validates every resource of the request bundles under a folder (the
//! files `fhirlift migrate --dry-run DIR` writes) and prints the issues
//! grouped by rule and location, with counts: how far a mapping's output
//! is from valid R4.
//!
//! `cargo run --release -p fhirlift-fhir --example validate_bundles DIR`

use std::collections::BTreeMap;
use std::path::Path;

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: validate_bundles DIR");
        std::process::exit(2);
    };
    let mut resources = 0u64;
    let mut validating = std::time::Duration::ZERO;
    let mut invalid = 0u64;
    let mut groups: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut files = Vec::new();
    collect(Path::new(&dir), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a readable bundle file");
        let bundle: serde_json::Value = serde_json::from_str(&text).expect("a JSON bundle");
        let mut entries: Vec<&serde_json::Value> = Vec::new();
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            if entry["resource"]["resourceType"] == "Bundle" {
                entries.extend(entry["resource"]["entry"].as_array().into_iter().flatten());
            } else {
                entries.push(entry);
            }
        }
        for entry in entries {
            resources += 1;
            let started = std::time::Instant::now();
            let issues = fhirlift_fhir::validate(&entry["resource"]);
            validating += started.elapsed();
            if issues.iter().any(fhirlift_fhir::Issue::is_error) {
                invalid += 1;
            }
            for issue in issues {
                let key = format!(
                    "{} {} {}",
                    issue.severity().name(),
                    issue.rule.name(),
                    issue.place()
                );
                let slot = groups.entry(key).or_insert((0, issue.message.clone()));
                slot.0 += 1;
            }
        }
    }
    println!(
        "{resources} resources, {invalid} invalid (with an error); validating took {:.2} s ({:.0} resources/s on one core, JSON parsing aside)",
        validating.as_secs_f64(),
        resources as f64 / validating.as_secs_f64().max(1e-9)
    );
    for (key, (count, message)) in groups {
        println!("{count:>8}  {key}: {message}");
    }
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a readable folder").flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}
