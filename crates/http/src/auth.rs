//! Authentication for the sender: a static bearer token, HTTP Basic, or
//! OAuth2 client credentials (SMART backend services, as Medplum serves them).
//!
//! Secrets live only here; `Debug` never prints them and no log line holds them.

use std::fmt;
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;

/// How to authenticate to the server.
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    None,
    /// `Authorization: Bearer …`
    Bearer(String),
    /// `Authorization: Basic …`
    Basic { user: String, password: String },
    /// OAuth2 client credentials; the token endpoint comes from
    /// `{server}/.well-known/smart-configuration` unless given.
    ClientCredentials {
        client_id: String,
        client_secret: String,
        token_url: Option<String>,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("Auth::None"),
            Auth::Bearer(_) => f.write_str("Auth::Bearer(<redacted>)"),
            Auth::Basic { user, .. } => write!(f, "Auth::Basic({user}, <redacted>)"),
            Auth::ClientCredentials {
                client_id,
                token_url,
                ..
            } => {
                write!(
                    f,
                    "Auth::ClientCredentials({client_id}, <redacted>, {token_url:?})"
                )
            }
        }
    }
}

/// Authentication failed.
#[derive(Debug, Clone)]
pub(crate) struct AuthError {
    /// The server refused the credentials: retrying will not help.
    pub refused: bool,
    pub message: String,
}

impl From<String> for AuthError {
    /// Discovery and transport failures may pass: retried.
    fn from(message: String) -> AuthError {
        unreachable(message)
    }
}

fn unreachable(message: String) -> AuthError {
    AuthError {
        refused: false,
        message,
    }
}

fn refused(message: String) -> AuthError {
    AuthError {
        refused: true,
        message,
    }
}

/// Tokens are renewed this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(60);

struct Token {
    header: HeaderValue,
    expires: Instant,
}

/// The auth in use, with its cached token.
pub(crate) struct AuthState {
    auth: Auth,
    base_url: String,
    token: tokio::sync::Mutex<Option<Token>>,
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

fn sensitive(value: String) -> Result<HeaderValue, String> {
    let mut v = HeaderValue::from_str(&value)
        .map_err(|_| "the credential holds characters a header cannot".to_owned())?;
    v.set_sensitive(true);
    Ok(v)
}

impl AuthState {
    /// The credentials themselves.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    pub fn new(auth: Auth, base_url: &str) -> AuthState {
        AuthState {
            auth,
            base_url: base_url.trim_end_matches('/').to_owned(),
            token: tokio::sync::Mutex::new(None),
        }
    }

    /// The `Authorization` header to send, fetching a token when needed.
    pub async fn header(&self, client: &reqwest::Client) -> Result<Option<HeaderValue>, AuthError> {
        match &self.auth {
            Auth::None => Ok(None),
            Auth::Bearer(token) => sensitive(format!("Bearer {token}"))
                .map(Some)
                .map_err(refused),
            Auth::Basic { user, password } => {
                sensitive(basic(user, password)).map(Some).map_err(refused)
            }
            Auth::ClientCredentials {
                client_id,
                client_secret,
                token_url,
            } => {
                let mut cached = self.token.lock().await;
                if let Some(t) = cached.as_ref()
                    && Instant::now() + RENEW_BEFORE < t.expires
                {
                    return Ok(Some(t.header.clone()));
                }
                let token = self
                    .fetch(client, client_id, client_secret, token_url.as_deref())
                    .await?;
                let header = token.header.clone();
                *cached = Some(token);
                Ok(Some(header))
            }
        }
    }

    /// Forgets the cached token after a 401 on `used`, unless another
    /// request already replaced it.
    pub async fn invalidate(&self, used: Option<&HeaderValue>) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().map(|t| &t.header) == used || used.is_none() {
            *cached = None;
        }
    }

    async fn fetch(
        &self,
        client: &reqwest::Client,
        client_id: &str,
        client_secret: &str,
        token_url: Option<&str>,
    ) -> Result<Token, AuthError> {
        let (url, post_secret) = match token_url {
            Some(u) => (u.to_owned(), false),
            None => {
                let discovery = format!("{}/.well-known/smart-configuration", self.base_url);
                let config: serde_json::Value = client
                    .get(&discovery)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| {
                        format!(
                            "cannot read {discovery}: {e}; give the token endpoint with --token-url"
                        )
                    })?
                    .bytes()
                    .await
                    .map_err(|e| format!("cannot read {discovery}: {e}"))
                    .and_then(|b| {
                        serde_json::from_slice(&b)
                            .map_err(|e| format!("{discovery} is not JSON: {e}"))
                    })?;
                let url = config["token_endpoint"]
                    .as_str()
                    .ok_or_else(|| {
                        format!("{discovery} names no token_endpoint; give it with --token-url")
                    })?
                    .to_owned();
                let methods = config["token_endpoint_auth_methods_supported"].as_array();
                let basic_ok = methods.is_none_or(|m| m.iter().any(|x| x == "client_secret_basic"));
                (url, !basic_ok)
            }
        };
        let mut form = vec![("grant_type", "client_credentials")];
        let mut request = client.post(&url);
        if post_secret {
            form.push(("client_id", client_id));
            form.push(("client_secret", client_secret));
        } else {
            request = request.header(
                reqwest::header::AUTHORIZATION,
                sensitive(basic(client_id, client_secret))?,
            );
        }
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| unreachable(format!("token request to {url} failed: {e}")))?;
        let status = response.status();
        let body: serde_json::Value = match response.bytes().await {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(unreachable(format!(
                "the token endpoint {url} answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(refused(format!(
                "the token endpoint {url} refused the client credentials ({status}: {}); check the client id and secret",
                body["error_description"]
                    .as_str()
                    .or(body["error"].as_str())
                    .unwrap_or("no reason given")
            )));
        }
        let access = body["access_token"].as_str().ok_or_else(|| {
            refused(format!(
                "the token endpoint {url} answered without an access_token"
            ))
        })?;
        let expires_in = body["expires_in"].as_u64().unwrap_or(3600);
        Ok(Token {
            header: sensitive(format!("Bearer {access}")).map_err(refused)?,
            expires: Instant::now() + Duration::from_secs(expires_in),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_base64_and_debug_hides_secrets() {
        assert_eq!(
            basic("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(basic("a", "b"), "Basic YTpi");
        let shown = format!(
            "{:?}",
            Auth::ClientCredentials {
                client_id: "id".into(),
                client_secret: "s3cret".into(),
                token_url: None
            }
        );
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!format!("{:?}", Auth::Bearer("XYZZY".into())).contains("XYZZY"));
    }
}
