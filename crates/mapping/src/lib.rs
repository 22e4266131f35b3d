//! fhirlift-mapping: the migration file and the templates that turn records
//! into FHIR.
//!
//! - [`yaml`] and [`config`]: the migration file, with a position for every
//!   node so that every complaint names its `file:line`.
//! - [`stream`]: a stream's compiled mapping, [`StreamMapper`], which
//!   implements core's [`ResourceMapper`](fhirlift_core::ResourceMapper);
//!   `template` compiles FHIR-shaped YAML once, `functions` and `filters`
//!   are what expressions may call, `dates` the date conversions.
//! - [`schema`]: the migration file as JSON Schema, for editors.
//!
//! API boundary: the pipeline compiles streams here and sees only core's
//! mapper contract afterwards. Architecture invariant: nothing here does
//! I/O past reading the migration file; a mapper is pure.

pub mod config;
mod dates;
mod decimal;
#[cfg(test)]
mod differential;
mod filters;
mod functions;
mod overrides;
pub mod schema;
pub mod stream;
mod template;
mod template_maps;
pub mod yaml;

pub use config::{ConfigError, ConfigErrors, MigrationConfig};
pub use dates::{DateError, to_fhir_date, to_fhir_datetime};
pub use decimal::{DecimalError, to_fhir_decimal};
pub use functions::environment;
pub use overrides::WithOverrides;
pub use stream::{LookupTable, StreamMapper};
