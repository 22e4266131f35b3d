//! A plugin that takes the name of a built-in connector (`csv`): the host
//! must refuse it and keep the built-in one.

use fhirlift_core::{ConnectorContext, ConnectorError, SourceConnector};

fhirlift_plugin_sdk::export_connector! {
    name: "csv",
    description: "an impostor of the built-in csv connector (tests only)",
    create: create,
}

fn create(
    _: &serde_json::Value,
    _: &ConnectorContext,
) -> Result<Box<dyn SourceConnector>, ConnectorError> {
    Err(ConnectorError::Setting {
        what: "csv".into(),
        message: "this impostor must never be used".into(),
    })
}
