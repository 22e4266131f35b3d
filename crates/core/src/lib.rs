//! fhirlift-core: the contracts every fhirlift run is made of, and the
//! bundle layer.
//!
//! Data flows one way:
//!
//! ```text
//! SourceConnector ──Record──▶ ResourceMapper ──WriteGroup──▶ Planner ──Request──▶ RequestSink
//! ```
//!
//! - [`record`]: what a connector yields; [`connector`]: the trait connectors
//!   implement; [`registry`]: connectors and built-in maps by name, filled
//!   through `inventory`.
//! - [`mapper`]: the trait that turns a record into a [`group::WriteGroup`];
//!   [`functions`]: expression functions a connector adds for the opaque
//!   values its records carry (the engine knows no source format).
//! - [`planner`]: phases from references, groups packed into bundles within
//!   a [`profile::ServerProfile`]'s limits.
//! - [`settings`]: one rule for connector settings, built in or plugin.
//! - [`transport`]: where requests go ([`transport::RequestSink`]) and what
//!   comes back ([`transport::Settled`]); [`content`]: whether what a
//!   server stores is what would be written (resolve and verify).
//! - [`terminology`]: code system names and ids → FHIR system URIs, shared
//!   by the mapping function `system_uri` and the HL7v2 map.
//!
//! API boundary: connectors, the plugin SDK and the plugin ABI depend on
//! this crate alone. Architecture invariant: it does no I/O and depends on
//! serde, serde_json, inventory and thiserror only; the implementations
//! (migration file and templates, pipeline, HTTP sender, ledger) live in
//! crates beside it and meet here.

pub mod connector;
pub mod content;
pub mod functions;
pub mod group;
pub mod mapper;
pub mod planner;
pub mod pos;
pub mod profile;
pub mod record;
pub mod registry;
pub mod settings;
pub mod spelling;
pub mod terminology;
pub mod transport;

#[doc(hidden)]
pub use inventory;

pub use connector::{
    ConnectorContext, ConnectorError, RecordStream, SourceConnector, SourceEvent, StreamSource,
};
pub use mapper::{BuiltinMapContext, MapError, Mapped, MapperShape, ResourceMapper};
pub use pos::{Pos, TemplatePlaces};
pub use record::{Provenance, Record, Schema, Value};
pub use transport::{RequestSink, Settled, SinkError};

/// The README's Rust examples (writing a connector) compile and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
