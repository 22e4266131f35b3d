//! fhirlift-core: the parts every fhirlift run is made of.
//!
//! Data flows one way:
//!
//! ```text
//! SourceConnector ──Record──▶ ResourceMapper ──WriteGroup──▶ Planner ──Request──▶ sink
//! ```
//!
//! - [`record`]: what a connector yields; [`connector`]: the trait connectors implement;
//!   [`registry`]: connectors by name, filled through `inventory`.
//! - [`config`] and [`yaml`]: the migration file, with positions for errors.
//! - [`mapping`]: FHIR-shaped templates compiled once, records to [`group::WriteGroup`]s.
//! - [`planner`]: phases from references, groups packed into bundles within a
//!   [`profile::ServerProfile`]'s limits.
//! - [`pipeline`]: drives a migration plan to a [`pipeline::RequestSink`];
//!   [`rejects`]: the NDJSON file of records that could not go.

pub mod civil;
pub mod claims;
pub mod config;
pub mod connector;
pub mod group;
pub mod ledger;
pub mod mapping;
pub mod pipeline;
pub mod planner;
pub mod profile;
pub mod record;
pub mod registry;
pub mod rejects;
pub mod sender;
pub mod spelling;
pub mod yaml;

#[doc(hidden)]
pub use inventory;

pub use connector::{
    ConnectorContext, ConnectorError, RecordStream, SourceConnector, SourceEvent, StreamSource,
};
pub use mapping::ResourceMapper;
pub use record::{Provenance, Record, Schema, Value};

/// The README's Rust examples (writing a connector) compile and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
