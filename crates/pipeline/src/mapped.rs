//! Every record of a migration mapped, in phase order, with nothing
//! planned, packed or sent: what `verify` compares with a server. The
//! source is read exactly as `migrate` reads it (the same connector,
//! lookups and mappings); memory holds one chunk of records at a time.

use std::ops::ControlFlow;

use fhirlift_core::connector::SourceEvent;
use fhirlift_core::group::WriteGroup;
use fhirlift_core::mapper::{MapError, Mapped};
use fhirlift_core::record::Provenance;

use crate::plan::{Plan, PlannedStream};

/// What one record of the source became.
#[derive(Debug)]
pub enum MappedRecord {
    /// The resources it writes.
    Group(WriteGroup),
    /// Nothing to write (every entry skipped by `when:`, or a built-in map
    /// that does not cover it), with the reason when there is one.
    Skipped(Provenance, Option<String>),
    /// The mapping failed: it would be rejected.
    Failed(MapError),
    /// The connector could not read it: it would be rejected.
    Unreadable(Provenance, String),
}

impl Plan {
    /// Reads and maps every stream, phase by phase, handing each record to
    /// `visit` with its stream; `visit` may stop the walk.
    pub fn map_each(
        &self,
        visit: &mut dyn FnMut(&PlannedStream, MappedRecord) -> ControlFlow<()>,
    ) -> Result<(), fhirlift_core::ConnectorError> {
        for phase in &self.phases {
            for name in &phase.streams {
                let Some(planned) = self.stream(name) else {
                    continue;
                };
                let mut open = self.connector.open(&planned.source)?;
                while let Some(chunk) = open.blocking_next_chunk() {
                    for event in chunk {
                        let mapped = match event {
                            SourceEvent::Record(record) => {
                                let provenance = record.provenance.clone();
                                match planned.mapper.map(record) {
                                    Ok(Mapped::Group(group)) => MappedRecord::Group(group),
                                    Ok(Mapped::Skipped(why)) => {
                                        MappedRecord::Skipped(provenance, why)
                                    }
                                    Err(e) => MappedRecord::Failed(e),
                                }
                            }
                            SourceEvent::Rejected(e) => MappedRecord::Unreadable(
                                e.provenance.clone(),
                                format!("{} ({})", e.reason, e.hint),
                            ),
                            SourceEvent::Failed(e) => return Err(e),
                        };
                        if visit(planned, mapped).is_break() {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
