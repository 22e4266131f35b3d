//! What a run did: per stream and resource type, and in all
//! ([`RunSummary`]); how a run uses the ledger ([`RunOptions`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use fhirlift_core::transport::Traffic;
use fhirlift_ledger::Ledger;

/// Adds `delta` to a per-type count without allocating for known types.
pub(crate) fn count(counts: &mut BTreeMap<String, u64>, resource_type: &str, delta: i64) {
    match counts.get_mut(resource_type) {
        Some(n) => *n = n.saturating_add_signed(delta),
        None => {
            counts.insert(resource_type.to_owned(), delta.max(0) as u64);
        }
    }
}

/// How a run uses the ledger, and which records it takes.
#[derive(Default)]
pub struct RunOptions<'l> {
    /// The state store: resume marks, delta, rejects. `None`: no memory
    /// between runs (dry runs, previews).
    pub ledger: Option<&'l mut Ledger>,
    /// `--full`: start every stream at its beginning and send every
    /// record, whatever the ledger says.
    pub full: bool,
    /// `--shard K/N`: only the records whose key hashes to K of N.
    pub shard: Option<(u64, u64)>,
    /// `retry-rejects`: only the records the ledger holds as rejected.
    pub only_rejected: bool,
    /// Set (by Ctrl-C) to stop reading; what is in flight is settled.
    pub stop: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// `--phase N`: run only this phase (shards run a phase each, all of
    /// them, before any starts the next).
    pub phase: Option<usize>,
    /// Streams sent in full although the run is a delta: the server lost
    /// resources the ledger says it acknowledged (see the runner's probe).
    pub full_streams: std::collections::BTreeSet<String>,
}

/// What happened to one stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamSummary {
    pub stream: String,
    pub phase: usize,
    /// Records read from the source (rejected ones included).
    pub records: u64,
    /// Resources planned, by type.
    pub resources: BTreeMap<String, u64>,
    /// Records that write nothing: every emit entry skipped by `when:`, or
    /// not covered by the built-in map.
    pub skipped: u64,
    /// The reasons given for skipped records (message types without a map), counted.
    pub skipped_because: BTreeMap<String, u64>,
    pub rejected: u64,
    pub requests: u64,
    pub bytes: u64,
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
    /// Set when the stream stopped early (the source failed, or Ctrl-C).
    pub failed: Option<String>,
    /// Where reading started: after this record, from the ledger's mark.
    pub resumed_after: Option<String>,
    /// Records the ledger knew unchanged: no request was sent for them.
    pub unchanged_records: u64,
    /// What the server answered, by resource type (empty in a dry run).
    pub written: BTreeMap<String, OutcomeCounts>,
    /// Operations that needed more than one attempt.
    pub retried: u64,
    /// Identities written by two records of this run with different
    /// content (each pair is a line of the collisions file).
    pub collisions: u64,
    /// Records whose key an earlier record of the run had, with other
    /// content, written all the same (`collisions: later-wins`).
    pub repeated_keys: u64,
    /// Records with a resource that is not valid FHIR R4 (rejected, or
    /// sent under `target.validate: warn`).
    pub invalid_records: u64,
    /// Their issues by rule, location and mapping line
    /// (`code-not-in-value-set Patient.gender at migration.yaml:14:7`):
    /// how many, and the first record with it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub invalid: BTreeMap<String, (u64, String)>,
    /// Information found by validation (codes outside an extensible or
    /// preferred binding), counted the same way: never a reject.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub information: BTreeMap<String, (u64, String)>,
}

impl StreamSummary {
    /// Operations the server acknowledged (created, updated or unchanged).
    pub fn written_count(&self) -> u64 {
        self.written
            .values()
            .map(|c| c.created + c.updated + c.unchanged)
            .sum()
    }
}

/// Server outcomes of one resource type.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct OutcomeCounts {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: u64,
}

pub(crate) fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What happened in a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub streams: Vec<StreamSummary>,
    /// Requests really sent, when writing to a server.
    pub traffic: Option<Traffic>,
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
    pub rejects_file: Option<PathBuf>,
    /// The collisions file, when a collision was written to it.
    pub collisions_file: Option<PathBuf>,
    /// The first rejects (up to five), as `provenance: reason`.
    pub first_rejects: Vec<String>,
}

impl RunSummary {
    /// Identities written by two records with different content.
    pub fn collisions(&self) -> u64 {
        self.streams.iter().map(|s| s.collisions).sum()
    }

    pub fn rejected(&self) -> u64 {
        self.streams.iter().map(|s| s.rejected).sum()
    }

    pub fn failed(&self) -> bool {
        self.streams.iter().any(|s| s.failed.is_some())
    }

    pub fn resources(&self) -> u64 {
        self.streams.iter().flat_map(|s| s.resources.values()).sum()
    }

    pub fn requests(&self) -> u64 {
        self.streams.iter().map(|s| s.requests).sum()
    }
}
