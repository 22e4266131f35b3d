//! End-to-end tests: the `fhirlift` command run in-process on real files,
//! one module per area.

mod auth;
mod cli;
mod golden;
mod hl7v2;
mod ledger;
mod medplum;
mod merges;
mod network;
mod omop;
mod plugins;
mod postgres;
mod postgres_schema;
mod real_medplum;
mod rejects;
mod report;
mod rerun;
mod sandbox;
mod schema;
mod support;
mod synthea;
mod validation;
mod validation_agreement;
mod verify;
mod volume;
