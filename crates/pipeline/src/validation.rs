//! Every mapped resource checked against FHIR R4 (`fhirlift-fhir`) on the
//! mapping thread, before the record is claimed, checked against the ledger
//! or packed. Under `target.validate: reject` (the default) a record with
//! an invalid resource is rejected with its issues; under `warn` it is
//! sent and its issues counted; under `off` nothing is checked.
//!
//! Issues are counted by rule, place (list positions folded) and the
//! mapping line that wrote the element (`bad-format Patient.name[].given[]
//! at migration.yaml:12:9`): what logs and summaries show never holds a
//! value. Codes outside an extensible or preferred binding are counted as
//! information and never reject.

use std::sync::Arc;

use fhirlift_core::mapper::{MapError, Mapped};
use fhirlift_core::record::Provenance;
use fhirlift_mapping::config::ValidateMode;

/// How many issues a reject quotes before it only counts them.
const QUOTED_ISSUES: usize = 8;

/// A record's issues, each as `rule place at file:line` (the mapping line
/// when a template wrote the resource): errors, and information (codes
/// outside an extensible or preferred binding), which never rejects.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Each issue, and whether it is an error.
    pub issues: Vec<(bool, String)>,
}

impl Findings {
    /// Whether a resource of the record is invalid.
    pub fn any_error(&self) -> bool {
        self.issues.iter().any(|(error, _)| *error)
    }
}

/// The record's mapping, rejected when `mode` says so and a resource is
/// invalid, and what was found.
pub(crate) fn validate(
    mode: ValidateMode,
    mapped: Result<Mapped, MapError>,
    stream: &Arc<str>,
    key: &str,
    provenance: &Provenance,
) -> (Result<Mapped, MapError>, Findings) {
    let mut findings = Findings::default();
    let refuse = |message: String| MapError {
        stream: stream.clone(),
        key: key.to_owned(),
        provenance: provenance.clone(),
        at: None,
        message,
    };
    let Ok(Mapped::Group(group)) = &mapped else {
        return (mapped, findings);
    };
    if mode == ValidateMode::Off {
        return (mapped, findings);
    }
    let mut quoted = Vec::new();
    let resources: Result<Vec<serde_json::Value>, _> = group
        .operations
        .iter()
        .map(|op| op.resource.try_to_value())
        .collect();
    let resources = match resources {
        Ok(r) => r,
        Err(e) => {
            let error = refuse(format!(
                "a mapped resource is not JSON a server can read ({e}); this is a bug in \
                 fhirlift or in a plugin's mapper: please report it with this record"
            ));
            return (Err(error), findings);
        }
    };
    let mut issues: Vec<(usize, fhirlift_fhir::Issue)> = Vec::new();
    for (i, resource) in resources.iter().enumerate() {
        // an amendment names only what it changes: the resource it goes
        // onto holds the rest (a top-level required element among it)
        let partial = group.operations[i].amends;
        issues.extend(
            fhirlift_fhir::validate(resource)
                .into_iter()
                .filter(|issue| {
                    !(partial
                        && issue.rule == fhirlift_fhir::Rule::Required
                        && issue.location.matches('.').count() == 1)
                })
                .map(|issue| (i, issue)),
        );
    }
    // urn:uuid references within the record's group (its transaction)
    let has_urns = group
        .operations
        .iter()
        .any(|op| op.resource.as_str().contains("\"urn:uuid:"));
    let entries: Vec<(Option<&str>, &serde_json::Value)> = group
        .operations
        .iter()
        .zip(&resources)
        .map(|(op, r)| (op.full_url.as_deref(), r))
        .collect();
    if has_urns {
        issues.extend(fhirlift_fhir::unresolved_references(&entries));
    }
    for (i, issue) in issues {
        let op = &group.operations[i];
        let written_at = op
            .template
            .as_ref()
            .map(|t| format!(" at {}", t.place_of(&issue.location)))
            .unwrap_or_default();
        let found = format!("{} {}{written_at}", issue.rule.name(), issue.place());
        let error = issue.is_error();
        findings.issues.push((error, found));
        if error && quoted.len() < QUOTED_ISSUES {
            quoted.push(format!(
                "resource {} ({}): {issue}{written_at}",
                i + 1,
                op.resource_type
            ));
        }
    }
    let errors = findings.issues.iter().filter(|(error, _)| *error).count();
    if errors == 0 || mode == ValidateMode::Warn {
        return (mapped, findings);
    }
    let more = errors.saturating_sub(quoted.len());
    let error = refuse(format!(
        "not valid FHIR R4, so not sent (target.validate: reject): {}{}; fix the mapping, \
         or set target.validate: warn to send it anyway",
        quoted.join("; "),
        if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        }
    ));
    (Err(error), findings)
}
