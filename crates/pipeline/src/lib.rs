//! The pipeline: prepares a migration (connector, lookups, compiled
//! mappings, phases) and drives it, phase by phase, to a [`RequestSink`].
//!
//! Data moves one way: connector → mapper → packer → sink. Rejects are
//! written as they happen; memory holds one open bundle per stream and the
//! bounded channels between the connector, the mapping thread and the main
//! loop, whatever the source size.
//!
//! Threads per stream: the connector's reader, the mapping thread
//! ([`MappingStage`]: filter, map, hash) and the main loop (ledger delta
//! check, packing, accounting); requests go out on the sender's runtime.

pub mod rejects;

mod accounts;
mod dry_run;
mod mapped;
mod mapping_stage;
mod plan;
mod progress;
mod stream;
mod summary;
mod validation;

use std::sync::OnceLock;

use minijinja::Environment;

pub use dry_run::DryRunSink;
pub use mapped::MappedRecord;
pub use mapping_stage::shard_of;
pub use plan::{Plan, PlannedStream, PreviewError};
pub use progress::{LogProgress, ProgressObserver};
pub use summary::{OutcomeCounts, RunOptions, RunSummary, StreamSummary};

/// The expression environment: one per process, shared by every mapping.
pub fn expression_env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(fhirlift_mapping::environment)
}
