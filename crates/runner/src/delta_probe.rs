//! Before a delta run trusts its ledger: does the server still hold a
//! sample of what the ledger says it acknowledged? Streams whose types it
//! lost are sent in full.

use std::io::Write;

use anyhow::anyhow;
use fhirlift_http::SenderSink;
use fhirlift_ledger::Ledger;
use fhirlift_pipeline::Plan;

/// Identities of each resource type the ledger samples before a delta run.
const PROBE_PER_TYPE: usize = 20;

/// Before a delta run trusts the ledger: asks the server for a sample of
/// what the ledger says it acknowledged (one search per resource type).
/// The streams that write a type the server has lost any of, or refer to
/// it, are sent in full, and the run says so.
pub(crate) fn streams_the_server_lost(
    plan: &Plan,
    sink: &SenderSink,
    ledger: &Ledger,
    out: &mut dyn Write,
) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let sample = ledger.sample(PROBE_PER_TYPE).map_err(|e| anyhow!("{e}"))?;
    let mut full = std::collections::BTreeSet::new();
    if sample.is_empty() {
        return Ok(full);
    }
    let missing = sink.missing_from_server(&sample).map_err(|e| {
        anyhow!(
            "cannot check that the server still holds what the ledger says it acknowledged: {e}; \
                 fix the server or credentials, or run with --full"
        )
    })?;
    for (resource_type, (gone, sampled)) in &missing {
        let streams: Vec<&str> = plan
            .streams
            .iter()
            // writers recreate what was lost (with new ids); what refers
            // to it must be written again to point at the new ids
            .filter(|s| {
                s.shape.emitted_types.contains(resource_type)
                    || s.shape.referenced_types.contains(resource_type)
            })
            .map(|s| &*s.source.stream)
            .collect();
        full.extend(streams.iter().map(|s| s.to_string()));
        tracing::warn!(resource_type = %resource_type, gone, sampled, "the server lost resources the ledger says it acknowledged");
        writeln!(
            out,
            "the server no longer holds {gone} of {sampled} {resource_type} resources the ledger says it acknowledged \
             (reset, emptied or edited since): sending {} in full",
            if streams.is_empty() {
                "no stream of this migration".to_owned()
            } else {
                format!("stream {}", streams.join(", "))
            }
        )?;
    }
    Ok(full)
}
