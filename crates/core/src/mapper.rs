//! The mapper contract: what turns one record into the writes it stands for.
//!
//! Invariant: a mapper does no I/O. Everything it needs is in memory, and
//! everything it produces is a [`WriteGroup`]
//! (inside [`Mapped`]) or a [`MapError`] naming its record.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use crate::group::WriteGroup;
use crate::pos::Pos;
use crate::record::{Provenance, Record};

/// Turns one record into the writes it stands for.
pub trait ResourceMapper: Send + Sync {
    /// The stream this mapper serves.
    fn stream(&self) -> &str;
    /// The record's write group, or why it writes nothing.
    fn map(&self, record: Record) -> Result<Mapped, MapError>;
    /// What the mapper can write, known before any record is read: for
    /// phases, `check` and the profile's limits.
    fn shape(&self) -> MapperShape;
}

/// What a record maps to.
#[derive(Debug)]
pub enum Mapped {
    Group(WriteGroup),
    /// Nothing to write: every entry skipped by `when:` (no reason), or a
    /// built-in map that does not cover the record (the reason is counted
    /// and reported, e.g. "message type MDM^T02 has no built-in map").
    Skipped(Option<String>),
}

/// What a mapper writes and refers to.
#[derive(Debug, Clone, Default)]
pub struct MapperShape {
    /// Resource types it writes.
    pub emitted_types: BTreeSet<String>,
    /// Resource types its references point at across records.
    pub referenced_types: BTreeSet<String>,
    /// The most resources one record can emit and how many of them are
    /// updates on an identifier; `None` when it depends on the record
    /// (one resource per OBX segment).
    pub most_emitted: Option<(usize, usize)>,
    /// Whether everything one record emits is written atomically.
    pub transaction: bool,
}

/// Builds a built-in map for a stream (`map: hl7v2`).
pub struct BuiltinMapContext<'a> {
    pub stream: &'a str,
    /// The `map:` block's settings (empty object for `map: name`).
    pub options: &'a serde_json::Value,
}

/// A record that could not be mapped. `message` may quote the record's data:
/// it goes to the rejects file, never to logs.
#[derive(Debug, Clone)]
pub struct MapError {
    pub stream: Arc<str>,
    pub key: String,
    pub provenance: Provenance,
    /// The mapping line and field that failed, when one did.
    pub at: Option<(Pos, String)>,
    pub message: String,
}

impl MapError {
    /// Where it went wrong, without the record's data: safe for logs.
    pub fn location(&self) -> String {
        match &self.at {
            Some((pos, field)) => format!("{} ({field} at {pos})", self.provenance),
            None => self.provenance.to_string(),
        }
    }
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)
    }
}
