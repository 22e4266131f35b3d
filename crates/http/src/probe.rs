//! Questions a run asks the server before it writes: what the server is
//! (its capability statement), who fhirlift writes as (the principal that
//! names the ledger's target together with the URL), and whether the
//! server still holds what the ledger says it acknowledged.
//!
//! Each is a handful of GETs, made once per run with the run's
//! credentials; none of them writes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::auth::{Auth, AuthState};
use crate::client::{Answer, Http, transport_reason};
use crate::outcomes::is_transient;
use fhirlift_core::group::{encode_query_part, escape_search_value};
use fhirlift_core::transport::SampledIdentity;

/// Pages of one probe search followed before its answer is taken as whole.
const MAX_PROBE_PAGES: usize = 50;

/// A question asked before a run could not be answered: the reason (a
/// status, a transport failure), never patient data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProbeError(pub String);

impl From<String> for ProbeError {
    fn from(message: String) -> Self {
        ProbeError(message)
    }
}

/// A client and the credentials, for a few one-off requests.
struct OneOff {
    client: reqwest::Client,
    auth: AuthState,
    base: String,
}

impl OneOff {
    fn new(base_url: &str, auth: Auth) -> Result<OneOff, ProbeError> {
        let client = crate::client::client_builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let base = base_url.trim_end_matches('/').to_owned();
        Ok(OneOff {
            client,
            auth: AuthState::new(auth, &base),
            base,
        })
    }

    /// GETs `url` as FHIR JSON: the status and the body (`Null` when the
    /// body is not JSON).
    async fn get(&self, url: &str) -> Result<(u16, Value), ProbeError> {
        let mut request = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, crate::client::FHIR_JSON);
        if let Some(h) = self
            .auth
            .header(&self.client)
            .await
            .map_err(|e| e.message)?
        {
            request = request.header(reqwest::header::AUTHORIZATION, h);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot reach {url}: {}", transport_reason(&e)))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| transport_reason(&e))?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

/// The server's capability statement (`GET {base}/metadata`).
pub async fn fetch_capability(base_url: &str, auth: Auth) -> Result<Value, ProbeError> {
    let server = OneOff::new(base_url, auth)?;
    let url = format!("{}/metadata", server.base);
    match server.get(&url).await? {
        (200..=299, body) if body.is_object() => Ok(body),
        (200..=299, _) => Err(format!("{url} is not JSON").into()),
        (status, _) => Err(format!("{url} answered {status}").into()),
    }
}

/// How many times a probe asks again after a passing failure.
const PROBE_ATTEMPTS: u32 = 8;

/// A GET (a search when `search`), asked again after a passing failure
/// (429, 5xx, a broken connection): the server's `Retry-After`, else
/// 0.25 s doubling up to 8 s. A probe is a few requests before the run;
/// one 503 must not stop a migration.
async fn patiently(http: &Http, url: &str, search: bool) -> Answer {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let answer = if search {
            http.search_get(url).await
        } else {
            http.get(url).await
        };
        let wait = match &answer {
            Answer::Http {
                status,
                retry_after,
                ..
            } if is_transient(*status) => *retry_after,
            Answer::Transport(_) => None,
            _ => return answer,
        };
        if attempt >= PROBE_ATTEMPTS {
            return answer;
        }
        let backoff = Duration::from_millis(250 << (attempt - 1).min(5));
        tokio::time::sleep(wait.unwrap_or(backoff).min(Duration::from_secs(60))).await;
    }
}

/// Who the credentials write as, for the ledger's target: on a server
/// that answers Medplum's `GET {origin}/auth/me`, the project (one URL
/// serves many projects, and what a client sees is its project's);
/// elsewhere the client id, the Basic user, or a bearer token's `sub`
/// claim. `None` without credentials, or for an opaque bearer token.
/// Asked with the sender's own client and token.
pub(super) async fn principal(http: &Http) -> Result<Option<String>, ProbeError> {
    let from_credentials = match http.auth.auth() {
        Auth::None => return Ok(None),
        Auth::ClientCredentials { client_id, .. } => Some(format!("client {client_id}")),
        Auth::Basic { user, .. } => Some(format!("user {user}")),
        Auth::Bearer(token) => token_subject(token).map(|sub| format!("subject {sub}")),
    };
    // Medplum's FHIR base is {origin}/fhir/R4; /auth/me sits at the origin
    if let Some(at) = http.base.find("/fhir/") {
        let url = format!("{}/auth/me", &http.base[..at]);
        match patiently(http, &url, false).await {
            Answer::Http {
                status: 200, body, ..
            } => {
                if let Some(project) = body["project"]["id"].as_str() {
                    return Ok(Some(format!("project {project}")));
                }
            }
            Answer::AuthRefused(why) => return Err(why.into()),
            Answer::Transport(why) => return Err(format!("cannot reach {url}: {why}").into()),
            Answer::Http { .. } => {}
        }
    }
    Ok(from_credentials)
}

/// The `sub` claim of a JWT, read without checking its signature (it only
/// names the ledger's target; the server checks the token).
fn token_subject(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims["sub"].as_str().map(str::to_owned)
}

/// Of a sample of identities the ledger holds as acknowledged, those the
/// server no longer has, counted per resource type as (missing, sampled).
/// One search per type (`Type?identifier=s|v,…`); a type whose sample is
/// all there is left out.
pub(super) async fn missing_from_server(
    http: &Http,
    sample: &[SampledIdentity],
) -> Result<BTreeMap<String, (usize, usize)>, ProbeError> {
    let mut by_type: BTreeMap<&str, Vec<&SampledIdentity>> = BTreeMap::new();
    for s in sample {
        by_type.entry(&s.resource_type).or_default().push(s);
    }
    let mut missing = BTreeMap::new();
    for (resource_type, identities) in by_type {
        let mut url = format!("{}/{resource_type}?identifier=", http.base);
        for (n, s) in identities.iter().enumerate() {
            if n > 0 {
                url.push(',');
            }
            encode_query_part(&s.system, &mut url);
            url.push('|');
            encode_query_part(&escape_search_value(&s.value), &mut url);
        }
        url.push_str(&format!("&_count={}", identities.len() * 2));
        // every page: an identifier several resources share (two messages
        // naming one patient by different first identifiers) can fill the
        // first page, and an identity on a later page is not gone
        let mut held: std::collections::HashSet<(String, String)> = Default::default();
        let mut next = Some(url);
        let mut pages = 0;
        while let Some(page) = next.take() {
            pages += 1;
            let bundle = match patiently(http, &page, true).await {
                Answer::Http {
                    status: 200..=299,
                    body,
                    ..
                } if crate::reader::is_searchset(&body) => body,
                Answer::Http {
                    status: 200..=299,
                    body,
                    ..
                } => {
                    return Err(crate::reader::not_a_searchset_reason(resource_type, &body).into());
                }
                Answer::Http { status, body, .. } => {
                    return Err(format!(
                        "a search of {resource_type} by identifier answered {status} ({})",
                        crate::outcomes::outcome_text(&body)
                    )
                    .into());
                }
                Answer::AuthRefused(why) | Answer::Transport(why) => return Err(why.into()),
            };
            held.extend(
                bundle["entry"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|e| e["resource"]["identifier"].as_array().into_iter().flatten())
                    .filter_map(|i| {
                        Some((
                            i["system"].as_str()?.to_owned(),
                            i["value"].as_str()?.to_owned(),
                        ))
                    }),
            );
            if pages < MAX_PROBE_PAGES {
                next = crate::reader::next_link(&bundle).map(str::to_owned);
            }
        }
        let unheld: Vec<&&SampledIdentity> = identities
            .iter()
            .filter(|s| !held.contains(&(s.system.clone(), s.value.clone())))
            .collect();
        // an identity no resource holds any more, whose resource is still
        // there by id, was not lost by the server: another record of the
        // migration rewrote that resource with other identifiers (two
        // source identities of one patient, say). Said, not re-sent.
        let still_there = still_there(http, resource_type, &unheld).await?;
        for s in unheld.iter().filter(|s| {
            s.server_id
                .as_ref()
                .is_some_and(|id| still_there.contains(id))
        }) {
            tracing::warn!(
                resource_type,
                system = %s.system,
                value = %s.value,
                "the resource the ledger placed this identity on no longer carries it: \
                 another record of this migration rewrote it with other identifiers \
                 (two source identities for one resource); fhirlift verify lists such drift"
            );
        }
        let gone = unheld
            .iter()
            .filter(|s| {
                !s.server_id
                    .as_ref()
                    .is_some_and(|id| still_there.contains(id))
            })
            .count();
        if gone > 0 {
            missing.insert(resource_type.to_owned(), (gone, identities.len()));
        }
    }
    Ok(missing)
}

/// Which of the identities' server ids exist (one `_id` search).
async fn still_there(
    http: &Http,
    resource_type: &str,
    identities: &[&&SampledIdentity],
) -> Result<std::collections::HashSet<String>, ProbeError> {
    let ids: Vec<&str> = identities
        .iter()
        .filter_map(|s| s.server_id.as_deref())
        .collect();
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let mut url = format!("{}/{resource_type}?_id=", http.base);
    for (n, id) in ids.iter().enumerate() {
        if n > 0 {
            url.push(',');
        }
        encode_query_part(id, &mut url);
    }
    url.push_str(&format!("&_elements=id&_count={}", ids.len() + 10));
    match patiently(http, &url, true).await {
        Answer::Http {
            status: 200..=299,
            body,
            ..
        } if crate::reader::is_searchset(&body) => Ok(body["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
            .collect()),
        // a server that cannot search by _id: count them as gone (re-send)
        Answer::Http { .. } => Ok(Default::default()),
        Answer::AuthRefused(why) | Answer::Transport(why) => Err(why.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwt_names_its_subject_and_an_opaque_token_nothing() {
        // {"sub":"client-7","iss":"x"} in base64url, unsigned
        let token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJjbGllbnQtNyIsImlzcyI6IngifQ.";
        assert_eq!(token_subject(token).as_deref(), Some("client-7"));
        assert_eq!(token_subject("opaque-token"), None);
        assert_eq!(token_subject("a.b@d.c"), None);
    }
}
