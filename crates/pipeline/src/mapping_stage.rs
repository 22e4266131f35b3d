//! The mapping stage: a stream's records filtered (shard, retried keys),
//! mapped and hashed on a thread of their own, in order, so that mapping
//! overlaps the ledger and the packer.

use std::sync::Arc;

use fhirlift_core::connector::SourceEvent;
use fhirlift_core::mapper::{MapError, Mapped, ResourceMapper};
use fhirlift_core::record::Provenance;
use fhirlift_core::transport::SinkError;

/// Which records a run takes, and whether it should stop.
pub(crate) struct RecordFilter {
    pub(crate) full: bool,
    /// Streams taken in full in a delta run.
    pub(crate) full_streams: std::collections::BTreeSet<String>,
    pub(crate) shard: Option<(u64, u64)>,
    pub(crate) only_rejected: bool,
    pub(crate) stop: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl RecordFilter {
    /// Whether `stream` starts at its beginning and sends every record.
    pub(crate) fn full(&self, stream: &str) -> bool {
        self.full || self.full_streams.contains(stream)
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// The shard (of `n`) a record belongs to: a stable hash of its stream and key.
pub fn shard_of(stream: &str, key: &str, n: u64) -> u64 {
    (fhirlift_core::group::stable_hash128(&[stream, key]) % u128::from(n.max(1))) as u64
}

/// Mapped chunks waiting between the mapping thread and the main loop: a
/// bound, so memory stays flat when the sender is the slow part.
pub(crate) const MAPPED_CHUNKS_AHEAD: usize = 4;

/// What the mapping thread hands the main loop, in source order.
pub(crate) enum Prepared {
    Record {
        key: String,
        provenance: Provenance,
        /// Its place in the stream ([`fhirlift_ledger::Writer::ordinal`]).
        ordinal: u64,
        /// [`fhirlift_core::group::content_hash`] of each operation, for the delta.
        hashes: Vec<u128>,
        mapped: Result<Mapped, MapError>,
        /// The FHIR R4 issues of its resources (rule, place, mapping line).
        findings: crate::validation::Findings,
    },
    /// A record the connector could not read, and its ordinal.
    Rejected(fhirlift_core::connector::RecordError, u64),
    /// The stream cannot go on.
    Failed(String),
    /// The stream was read to its end (or failed): the last event sent.
    End,
}

/// Refuses a record that writes two resources on one identity (the
/// second would silently overwrite the first), naming both.
pub(crate) fn one_identity_each(
    mapped: Mapped,
    stream: &Arc<str>,
    key: &str,
    provenance: &Provenance,
) -> Result<Mapped, MapError> {
    let Mapped::Group(group) = &mapped else {
        return Ok(mapped);
    };
    let Some((first, second)) = group.shared_identity() else {
        return Ok(mapped);
    };
    let ops = &group.operations;
    let id = ops[second]
        .identity
        .as_ref()
        .expect("shared_identity found it");
    Err(MapError {
        stream: stream.clone(),
        key: key.to_owned(),
        provenance: provenance.clone(),
        at: None,
        message: format!(
            "two resources of this record are written on one identifier, {}?identifier={}|{}: resource {} ({}) and resource {} ({}); \
             the second would overwrite the first. Give each its own identifier (derive one from the record's key or a column that tells them apart)",
            id.resource_type,
            id.system,
            id.value,
            first + 1,
            ops[first].resource_type,
            second + 1,
            ops[second].resource_type,
        ),
    })
}

/// One stream's mapping, on its own thread: the connector's records are
/// filtered (shard, retried keys), mapped and hashed there, while the main
/// loop checks the ledger, packs and sends. Mapping is pure (no I/O, no
/// shared state), so it moves off the main loop without changing any
/// outcome; order is kept.
pub(crate) struct MappingStage {
    pub(crate) mapper: Arc<dyn ResourceMapper>,
    pub(crate) stream: Arc<str>,
    pub(crate) shard: Option<(u64, u64)>,
    pub(crate) retry: Option<std::collections::HashSet<String>>,
    /// The ordinal of the first record the connector yields (the records a
    /// resumed run skips are counted in it).
    pub(crate) first_ordinal: u64,
    /// What an invalid resource does (`target.validate`).
    pub(crate) validate: fhirlift_mapping::config::ValidateMode,
}

impl MappingStage {
    pub(crate) fn takes(&self, key: &str) -> bool {
        self.shard
            .is_none_or(|(k, n)| shard_of(&self.stream, key, n) == k)
            && self.retry.as_ref().is_none_or(|keys| keys.contains(key))
    }

    /// Starts the thread. It stops when the stream ends or the receiver is
    /// dropped; it ends with [`Prepared::End`] unless it panicked.
    pub(crate) fn spawn(
        self,
        mut open: fhirlift_core::connector::RecordStream,
    ) -> Result<std::sync::mpsc::Receiver<Vec<Prepared>>, SinkError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(MAPPED_CHUNKS_AHEAD);
        std::thread::Builder::new()
            .name(format!("map-{}", self.stream))
            .spawn(move || {
                let mut ordinal = self.first_ordinal;
                while let Some(chunk) = open.blocking_next_chunk() {
                    let mut out = Vec::with_capacity(chunk.len());
                    let mut failed = false;
                    for event in chunk {
                        match event {
                            SourceEvent::Record(record) => {
                                ordinal += 1;
                                if !self.takes(&record.key) {
                                    continue;
                                }
                                let key = record.key.clone();
                                let provenance = record.provenance.clone();
                                let mapped = self.mapper.map(record).and_then(|m| {
                                    one_identity_each(m, &self.stream, &key, &provenance)
                                });
                                let (mapped, findings) = crate::validation::validate(
                                    self.validate,
                                    mapped,
                                    &self.stream,
                                    &key,
                                    &provenance,
                                );
                                let hashes = match &mapped {
                                    Ok(Mapped::Group(g)) => g
                                        .operations
                                        .iter()
                                        .map(|o| {
                                            fhirlift_core::group::content_hash(o.resource.as_str())
                                        })
                                        .collect(),
                                    _ => Vec::new(),
                                };
                                out.push(Prepared::Record {
                                    key,
                                    provenance,
                                    ordinal: ordinal - 1,
                                    hashes,
                                    mapped,
                                    findings,
                                });
                            }
                            SourceEvent::Rejected(e) => {
                                ordinal += 1;
                                if self.takes(&e.provenance.to_string()) {
                                    out.push(Prepared::Rejected(e, ordinal - 1));
                                }
                            }
                            SourceEvent::Failed(e) => {
                                out.push(Prepared::Failed(e.to_string()));
                                failed = true;
                                break;
                            }
                        }
                    }
                    if failed {
                        out.push(Prepared::End);
                        let _ = tx.send(out);
                        return;
                    }
                    if tx.send(out).is_err() {
                        return;
                    }
                }
                let _ = tx.send(vec![Prepared::End]);
            })
            .map_err(|e| SinkError::caused("cannot start the mapping thread", e))?;
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirlift_core::connector::RecordStream;
    use fhirlift_core::mapper::MapperShape;
    use fhirlift_core::record::{Record, Schema, Value};

    /// Maps every record to nothing, and panics on the key "boom".
    struct PanicsOnBoom;

    impl ResourceMapper for PanicsOnBoom {
        fn stream(&self) -> &str {
            "s"
        }
        fn map(&self, record: Record) -> Result<Mapped, MapError> {
            if record.key == "boom" {
                panic!("a mapper bug");
            }
            Ok(Mapped::Skipped(None))
        }
        fn shape(&self) -> MapperShape {
            MapperShape::default()
        }
    }

    fn records(keys: &'static [&'static str]) -> RecordStream {
        RecordStream::from_blocking("s", move |tx| {
            let schema = Arc::new(Schema::new(vec!["c".into()]));
            for (n, key) in keys.iter().enumerate() {
                tx.send(SourceEvent::Record(Record {
                    stream: "s".into(),
                    key: (*key).to_owned(),
                    schema: schema.clone(),
                    values: vec![Value::Null],
                    provenance: Provenance::File {
                        file: "s.csv".into(),
                        line: n as u64 + 2,
                    },
                }));
            }
        })
        .unwrap()
    }

    fn stage(retry: Option<&[&str]>) -> MappingStage {
        MappingStage {
            mapper: Arc::new(PanicsOnBoom),
            stream: "s".into(),
            shard: None,
            retry: retry.map(|keys| keys.iter().map(|k| (*k).to_owned()).collect()),
            first_ordinal: 0,
            validate: fhirlift_mapping::config::ValidateMode::Off,
        }
    }

    fn keys_and_end(rx: std::sync::mpsc::Receiver<Vec<Prepared>>) -> (Vec<String>, bool) {
        let mut keys = Vec::new();
        let mut ended = false;
        for event in rx.iter().flatten() {
            match event {
                Prepared::Record { key, .. } => keys.push(key),
                Prepared::End => ended = true,
                _ => {}
            }
        }
        (keys, ended)
    }

    #[test]
    fn the_mapping_stage_keeps_order_and_ends_with_its_marker() {
        let rx = stage(None).spawn(records(&["a", "b", "c"])).unwrap();
        let (keys, ended) = keys_and_end(rx);
        assert_eq!(keys, ["a", "b", "c"]);
        assert!(ended);
    }

    #[test]
    fn the_mapping_stage_takes_only_the_retried_keys() {
        let rx = stage(Some(&["b"]))
            .spawn(records(&["a", "b", "c"]))
            .unwrap();
        assert_eq!(keys_and_end(rx).0, ["b"]);
    }

    #[test]
    fn a_mapper_panic_leaves_no_end_marker_so_the_stream_is_not_finished() {
        let rx = stage(None).spawn(records(&["a", "boom", "c"])).unwrap();
        let (keys, ended) = keys_and_end(rx);
        // the chunk being mapped is lost with the thread; nothing says "done"
        assert!(keys.is_empty(), "{keys:?}");
        assert!(!ended);
    }
}
