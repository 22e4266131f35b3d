//! Helpers of the sandbox's integration tests: a small client over real
//! HTTP and sandboxes started on a free port.

// each test binary uses some of them
#![allow(dead_code)]

use fhirlift_sandbox::{MedplumBehaviour, Sandbox, SandboxConfig};
use serde_json::{Value, json};

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
}

/// An answer: status, headers, JSON body (null when not JSON).
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Client {
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let a = self.call(method, path, body, &[]).await;
        (a.status, a.body)
    }

    /// `path` relative to the base, or an absolute URL.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}/{path}", self.base)
        };
        let mut request = self.http.request(method, url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(b) = body {
            request = request
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        answer(request.send().await.unwrap()).await
    }
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// A sandbox that stores what it is sent, valid R4 or not: these tests are
/// about its FHIR semantics, with small raw fixtures
/// ([`start_validating`] for the validation itself).
pub async fn start(config: SandboxConfig) -> (Sandbox, Client) {
    start_validating(SandboxConfig {
        no_validation: true,
        ..config
    })
    .await
}

pub async fn start_validating(config: SandboxConfig) -> (Sandbox, Client) {
    let sandbox = Sandbox::start(config).await.unwrap();
    let client = Client {
        http: reqwest::Client::new(),
        base: sandbox.base_url(),
    };
    (sandbox, client)
}

pub fn medplum(behaviour: MedplumBehaviour) -> SandboxConfig {
    SandboxConfig {
        medplum: Some(behaviour),
        ..SandboxConfig::default()
    }
}

pub fn patient(value: &str, family: &str) -> Value {
    json!({ "resourceType": "Patient", "identifier": [{ "system": "http://s/p", "value": value }], "name": [{ "family": family }] })
}
