//! The HTML report (`--report-html`): its sections, and numbers equal to
//! the JSON report's, on a 20,000-patient run into a faulty sandbox.

use fhirlift_sandbox::{Faults, SandboxConfig};
use fhirlift_tests::{TestServer, datagen, scratch};
use serde_json::Value;

use crate::support::{migrate, report};

/// The row of `html` whose attributes are `attributes` (up to its end).
fn row<'h>(html: &'h str, attributes: &str) -> &'h str {
    let at = html
        .find(attributes)
        .unwrap_or_else(|| panic!("no row with {attributes}"));
    let end = html[at..].find("</tr>").expect("rows end") + at;
    &html[at..end]
}

fn n(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {value}"))
}

#[test]
fn the_html_report_of_a_faulty_20000_patient_run_shows_what_the_json_report_says() {
    let server = TestServer::start(SandboxConfig {
        faults: Faults {
            rate_429: 0.02,
            rate_503: 0.02,
            rate_409: 0.002,
            seed: 21,
            ..Faults::default()
        },
        ..SandboxConfig::default()
    });
    let dir = scratch("report-html");
    let counts = datagen::write_example(&dir, 20_000, 21).unwrap();
    let html_path = dir.join("report.html");
    let run = migrate(
        &dir.join("migration.yaml"),
        &server.url(),
        &dir,
        &["--report-html", html_path.to_str().unwrap()],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let html = std::fs::read_to_string(&html_path).unwrap();
    let json = report(&dir);

    for section in [
        "<header id=\"summary\">",
        "<section id=\"streams\">",
        "<section id=\"timeline\">",
        "<section id=\"rejects\">",
    ] {
        assert!(html.contains(section), "{section}");
    }
    // three charts, each with its lines, and no script or remote resource
    assert_eq!(html.matches("<svg class=\"chart\"").count(), 3);
    assert!(html.matches("<polyline").count() >= 8);
    assert!(
        !html.contains("<script") && !html.contains("http://cdn") && !html.contains("https://")
    );

    // per stream and type: the JSON report's numbers
    let mut created = 0;
    for stream in json["streams"].as_array().unwrap() {
        let name = stream["stream"].as_str().unwrap();
        let head = row(
            &html,
            &format!("<tr class=\"stream\" data-stream=\"{name}\">"),
        );
        assert!(
            head.contains(&format!(
                "<td class=\"records\">{}</td>",
                n(stream, "records")
            )),
            "{head}"
        );
        for (resource_type, outcome) in stream["written"].as_object().unwrap() {
            let line = row(
                &html,
                &format!("data-stream=\"{name}\" data-type=\"{resource_type}\""),
            );
            for key in ["created", "updated", "unchanged"] {
                assert!(
                    line.contains(&format!("<td class=\"{key}\">{}</td>", n(outcome, key))),
                    "{key}: {line}"
                );
            }
            created += n(outcome, "created");
        }
    }
    assert_eq!(created, counts.resources());
    assert!(html.contains(&format!("id=\"total-created\">{created}<")));
    // the faults were seen over time: a retry line with points above zero
    assert!(
        json["streams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| n(s, "retried") > 0)
    );
    assert!(html.contains(">retries<") && html.contains(">429<") && html.contains(">5xx<"));
    // no value from the source: names stay out of the page
    let patients = std::fs::read_to_string(dir.join("data/patients.csv")).unwrap();
    let families: Vec<&str> = patients
        .lines()
        .skip(1)
        .take(200)
        .filter_map(|l| l.split(',').nth(2))
        .filter(|f| f.len() > 3 && f.chars().all(char::is_alphabetic))
        .collect();
    assert!(!families.is_empty());
    for family in families {
        assert!(!html.contains(family), "the page quotes a patient's name");
    }
}
