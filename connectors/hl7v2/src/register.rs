//! The built-in map `hl7v2` as a [`ResourceMapper`]: each message becomes
//! one transaction of conditional writes, linked by `urn:uuid`s.
//!
//! Settings (under a stream's `map: {builtin: hl7v2, ...}`):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `zone` | `UTC` | the zone of times written without an offset: `-05:00` or an IANA name (`America/New_York`) |
//! | `authorities` | — | assigning authority (namespace id or OID) → identifier system URI |
//! | `default_authority` | — | the identifier system for messages that name no authority (no CX.4, no MSH-4) |
//! | `unknown_authority_system` | `urn:fhirlift:hl7v2:authority:` | prefix of the system for authorities not in the table |

use std::collections::BTreeSet;
use std::sync::Arc;

use fhirlift_core::group::{Identity, Operation, ResourceJson, WriteGroup};
use fhirlift_core::mapper::{BuiltinMapContext, MapError, Mapped, MapperShape};
use fhirlift_core::{Record, ResourceMapper, Value};

use crate::ParsedMessage;
use fhirlift_hl7v2::Zone;
use fhirlift_hl7v2::fhir::Authorities;

use crate::maps::{self, MapOptions, MessageMap};

fhirlift_core::register_map! {
    name: "hl7v2",
    description: "HL7 v2 to FHIR after the V2-to-FHIR guide: ADT (A01-A16, A25-A31, A40, A41, A60), ORU^R01, ORM^O01, OML^O21, VXU^V04, MDM^T01-T11, SIU^S12-S26",
    create: create,
}

fn create(context: &BuiltinMapContext<'_>) -> Result<Box<dyn ResourceMapper>, String> {
    let options = read_options(context.options)?;
    Ok(Box::new(Hl7Mapper {
        stream: Arc::from(context.stream),
        options,
    }))
}

/// Reads the `map:` settings.
pub fn read_options(settings: &serde_json::Value) -> Result<MapOptions, String> {
    let mut options = MapOptions::default();
    let mut table = Vec::new();
    let mut base = fhirlift_hl7v2::fhir::FALLBACK_AUTHORITY_BASE.to_owned();
    let Some(obj) = settings.as_object() else {
        return Ok(options);
    };
    for (key, value) in obj {
        match key.as_str() {
            "zone" => {
                let spec = value.as_str().ok_or(
                    "zone: write an offset like -05:00 or an IANA name like America/New_York",
                )?;
                options.zone = Zone::parse(spec).map_err(|e| format!("zone: {e}"))?;
            }
            "authorities" => {
                let map = value.as_object().ok_or(
                    "authorities: a mapping of assigning authority (namespace id or OID) to identifier system URI",
                )?;
                for (authority, system) in map {
                    let system = system
                        .as_str()
                        .filter(|s| s.contains(':'))
                        .ok_or_else(|| format!("authorities.{authority}: the system must be a URI (urn:oid:..., http://...)"))?;
                    table.push((authority.clone(), system.to_owned()));
                }
            }
            "default_authority" => {
                let system = value
                    .as_str()
                    .filter(|s| s.contains(':'))
                    .ok_or("default_authority: an identifier system URI, e.g. urn:oid:1.2.3 or https://clinic.example/mrn")?;
                options.default_authority = Some(system.to_owned());
            }
            "unknown_authority_system" => {
                base = value
                    .as_str()
                    .filter(|s| s.contains(':'))
                    .ok_or("unknown_authority_system: a URI prefix, e.g. urn:fhirlift:hl7v2:authority:")?
                    .to_owned();
            }
            other => {
                return Err(format!(
                    "unknown setting {other:?}; the hl7v2 map takes zone, authorities, default_authority and unknown_authority_system"
                ));
            }
        }
    }
    options.authorities = Authorities::new(table, &base);
    Ok(options)
}

struct Hl7Mapper {
    stream: Arc<str>,
    options: MapOptions,
}

impl Hl7Mapper {
    fn error(&self, record: &Record, message: String) -> MapError {
        MapError {
            stream: self.stream.clone(),
            key: record.key.clone(),
            provenance: record.provenance.clone(),
            at: None,
            message,
        }
    }
}

impl ResourceMapper for Hl7Mapper {
    fn stream(&self) -> &str {
        &self.stream
    }

    fn shape(&self) -> MapperShape {
        MapperShape {
            emitted_types: maps::EMITTED_TYPES
                .iter()
                .map(|t| (*t).to_owned())
                .collect::<BTreeSet<_>>(),
            referenced_types: BTreeSet::new(),
            most_emitted: None,
            transaction: true,
        }
    }

    fn map(&self, record: Record) -> Result<Mapped, MapError> {
        let opaque = record.values.iter().find_map(|v| match v {
            Value::Opaque(o) => Some(o.clone()),
            _ => None,
        });
        let Some(ParsedMessage(message)) = opaque.as_ref().and_then(|o| o.downcast()) else {
            return Err(self.error(
                &record,
                "the hl7v2 map reads HL7 v2 messages: use it with the hl7v2 connector".into(),
            ));
        };
        let resources = match maps::map_message(message, &self.options) {
            Ok(MessageMap::Mapped(resources)) => resources,
            Ok(MessageMap::Unmapped { message_type }) => {
                return Ok(Mapped::Skipped(Some(format!(
                    "message type {message_type} has no built-in map"
                ))));
            }
            Err(e) => return Err(self.error(&record, e.0)),
        };
        if resources.is_empty() {
            return Ok(Mapped::Skipped(None));
        }
        let operations: Vec<Operation> = resources
            .into_iter()
            .map(|r| {
                let (system, value) = r.identity;
                let identity = Identity {
                    resource_type: r.resource_type.to_owned(),
                    system,
                    value,
                };
                let write = if r.amends {
                    Operation::amend_on
                } else {
                    Operation::update_on
                };
                write(
                    identity,
                    Some(r.full_url),
                    ResourceJson::from_value(&r.resource),
                )
            })
            .collect();
        Ok(Mapped::Group(WriteGroup {
            stream: self.stream.clone(),
            key: record.key.clone(),
            provenance: record.provenance.clone(),
            atomic: operations.len() > 1,
            // a message with more resources than a transaction holds is
            // written in parts, in order
            may_split: true,
            seq: 0,
            operations,
        }))
    }
}
