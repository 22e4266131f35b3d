//! Every mapped resource checked against FHIR R4 (`fhirlift-fhir`) on the
//! mapping thread, before the record is claimed, checked against the ledger
//! or packed. Under `target.validate: reject` (the default) a record with
//! an invalid resource is rejected with its issues; under `warn` it is
//! sent and its issues counted; under `off` nothing is checked.
//!
//! Issues are counted by rule and place, list positions folded
//! (`bad-format Patient.name[].given[]`): what logs and summaries show
//! never holds a value.

use std::sync::Arc;

use fhirlift_core::mapper::{MapError, Mapped};
use fhirlift_core::record::Provenance;
use fhirlift_mapping::config::ValidateMode;

/// How many issues a reject quotes before it only counts them.
const QUOTED_ISSUES: usize = 8;

/// The record's mapping, rejected when `mode` says so and a resource is
/// invalid, and the rule and location of each issue found.
pub(crate) fn validate(
    mode: ValidateMode,
    mapped: Result<Mapped, MapError>,
    stream: &Arc<str>,
    key: &str,
    provenance: &Provenance,
) -> (Result<Mapped, MapError>, Vec<String>) {
    let Ok(Mapped::Group(group)) = &mapped else {
        return (mapped, Vec::new());
    };
    if mode == ValidateMode::Off {
        return (mapped, Vec::new());
    }
    let mut found = Vec::new();
    let mut quoted = Vec::new();
    let resources: Vec<serde_json::Value> = group
        .operations
        .iter()
        .map(|op| op.resource.to_value())
        .collect();
    let mut issues: Vec<(usize, fhirlift_fhir::Issue)> = Vec::new();
    for (i, resource) in resources.iter().enumerate() {
        issues.extend(
            fhirlift_fhir::validate(resource)
                .into_iter()
                .map(|issue| (i, issue)),
        );
    }
    // urn:uuid references within the record's group (its transaction)
    let entries: Vec<(Option<&str>, &serde_json::Value)> = group
        .operations
        .iter()
        .zip(&resources)
        .map(|(op, r)| (op.full_url.as_deref(), r))
        .collect();
    issues.extend(fhirlift_fhir::unresolved_references(&entries));
    for (i, issue) in issues {
        found.push(format!("{} {}", issue.rule.name(), issue.place()));
        if quoted.len() < QUOTED_ISSUES {
            let op = &group.operations[i];
            quoted.push(format!(
                "resource {} ({}): {issue}",
                i + 1,
                op.resource_type
            ));
        }
    }
    if found.is_empty() || mode == ValidateMode::Warn {
        return (mapped, found);
    }
    let more = found.len().saturating_sub(quoted.len());
    let error = MapError {
        stream: stream.clone(),
        key: key.to_owned(),
        provenance: provenance.clone(),
        at: None,
        message: format!(
            "not valid FHIR R4, so not sent (target.validate: reject): {}{}; fix the mapping, \
             or set target.validate: warn to send it anyway",
            quoted.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        ),
    };
    (Err(error), found)
}
