//! A real Medplum server for the end-to-end tests: the kit that runs it
//! (`../shared/medplum`, started by `cargo xtask test` or `cargo xtask
//! medplum`), a fresh project per test from the kit's `medplum-project`,
//! and a small blocking FHIR client that reads back what a migration stored
//! there, with the project's own credentials.
//!
//! The kit is found through the environment `cargo xtask test` sets:
//! `MEDPLUM_URL` (the FHIR base, required), `MEDPLUM_PROJECTS` (the kit's
//! `projects.json`, which also names its state folder) and
//! `FHIRLIFT_MEDPLUM_KIT` (the kit's folder; default `../shared/medplum`
//! beside the workspace).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use reqwest::{Method, Url};
use serde_json::{Value, json};

/// The running kit, as the environment names it.
#[derive(Debug, Clone)]
pub struct Kit {
    /// The FHIR base, e.g. `http://127.0.0.1:8103/fhir/R4`.
    pub url: String,
    /// The kit's folder (holding `medplum-project`).
    pub dir: PathBuf,
    /// The kit's `projects.json`, when the environment names it.
    pub projects: Option<PathBuf>,
}

impl Kit {
    /// The kit from `MEDPLUM_URL`, `MEDPLUM_PROJECTS` and
    /// `FHIRLIFT_MEDPLUM_KIT`. Panics when `MEDPLUM_URL` is missing: a test
    /// against the real server never passes by not running.
    pub fn from_env() -> Kit {
        let url = std::env::var("MEDPLUM_URL").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| {
            panic!(
                "MEDPLUM_URL is not set: these tests run against the real Medplum server of the kit. \
                 Run them through `cargo xtask test` (it starts the kit and sets MEDPLUM_URL, \
                 MEDPLUM_PROJECTS and FHIRLIFT_MEDPLUM_KIT), or start the kit with `cargo xtask medplum` \
                 and export the MEDPLUM_URL and MEDPLUM_PROJECTS it prints"
            )
        });
        let dir = std::env::var_os("FHIRLIFT_MEDPLUM_KIT")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::workspace().join("../shared/medplum"));
        let projects = std::env::var_os("MEDPLUM_PROJECTS")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        Kit {
            url: url.trim_end_matches('/').to_owned(),
            dir,
            projects,
        }
    }

    /// A NEW, empty project (`medplum-project --json NAME PROFILE`):
    /// `default` (Medplum's quota), `tx` (transaction-bundles, raised
    /// quota) or `fast` (raised quota).
    pub fn project(&self, name: &str, profile: &str) -> Project {
        let script = self.dir.join("medplum-project");
        let mut command = Command::new(&script);
        if let Some(state_dir) = self.projects.as_ref().and_then(|p| p.parent()) {
            command.arg("--dir").arg(state_dir);
        }
        let out = command
            .args(["--json", name, profile])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e} (set FHIRLIFT_MEDPLUM_KIT to the kit's folder)",
                    script.display()
                )
            });
        assert!(
            out.status.success(),
            "{} --json {name} {profile} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let made: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "medplum-project printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        let field = |k: &str| {
            made[k]
                .as_str()
                .unwrap_or_else(|| panic!("no {k} in {made}"))
                .to_owned()
        };
        let id = field("projectId");
        // one variable per project, so tests running together never share one
        let secret_env = format!(
            "FHIRLIFT_TEST_MEDPLUM_SECRET_{}",
            id.replace('-', "_").to_ascii_uppercase()
        );
        let client_secret = field("clientSecret");
        // SAFETY of set_var: the name is new (the project was just made),
        // so nothing else reads it; it is set before any run uses it
        unsafe { std::env::set_var(&secret_env, &client_secret) };
        Project {
            url: self.url.clone(),
            id,
            client_id: field("clientId"),
            client_secret,
            secret_env,
            profile: profile.to_owned(),
        }
    }
}

/// One project on the kit's server, and its client's credentials.
#[derive(Debug, Clone)]
pub struct Project {
    /// The FHIR base every project shares.
    pub url: String,
    pub id: String,
    pub client_id: String,
    pub client_secret: String,
    /// The environment variable holding the secret, for `--client-secret-env`.
    pub secret_env: String,
    pub profile: String,
}

impl Project {
    /// `--client-id ID --client-secret-env VAR` for fhirlift.
    pub fn credentials(&self) -> Vec<String> {
        vec![
            "--client-id".into(),
            self.client_id.clone(),
            "--client-secret-env".into(),
            self.secret_env.clone(),
        ]
    }

    /// A FHIR client logged in as this project's client.
    pub fn fhir(&self) -> Fhir {
        Fhir::connect(self)
    }
}

/// A blocking FHIR client for one project (reqwest on a current-thread
/// runtime of its own).
pub struct Fhir {
    http: reqwest::Client,
    base: String,
    token: String,
    runtime: tokio::runtime::Runtime,
}

/// The most resources [`Fhir::all`] reads before it calls the result wrong.
const MOST_RESOURCES: usize = 50_000;

impl Fhir {
    /// Gets a token with client credentials (`POST {origin}/oauth2/token`,
    /// Basic auth).
    pub fn connect(project: &Project) -> Fhir {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime starts");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("an HTTP client builds");
        let origin = match project.url.find("/fhir/") {
            Some(at) => &project.url[..at],
            None => project.url.as_str(),
        };
        let token_url = format!("{origin}/oauth2/token");
        let answer = runtime.block_on(async {
            let response = http
                .post(&token_url)
                .basic_auth(&project.client_id, Some(&project.client_secret))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .unwrap_or_else(|e| panic!("POST {token_url}: {e}"));
            let status = response.status();
            let body = response.bytes().await.expect("the token answer is read");
            (status, body)
        });
        assert!(
            answer.0.is_success(),
            "POST {token_url}: {} {}",
            answer.0,
            String::from_utf8_lossy(&answer.1)
        );
        let body: Value = serde_json::from_slice(&answer.1).expect("the token answer is JSON");
        Fhir {
            token: body["access_token"]
                .as_str()
                .expect("the token answer holds access_token")
                .to_owned(),
            base: project.url.clone(),
            http,
            runtime,
        }
    }

    /// Sends one request; returns the status and the JSON body (`Null`
    /// when empty).
    fn send(&self, method: Method, url: Url, body: Option<&Value>) -> (u16, Value) {
        let shown = format!("{method} {url}");
        self.runtime.block_on(async {
            let mut request = self
                .http
                .request(method, url)
                .bearer_auth(&self.token)
                .header("Accept", "application/fhir+json");
            if let Some(body) = body {
                request = request
                    .header("Content-Type", "application/fhir+json")
                    .body(body.to_string());
            }
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{shown}: {e}"));
            let status = response.status().as_u16();
            let bytes = response
                .bytes()
                .await
                .unwrap_or_else(|e| panic!("{shown}: {e}"));
            let json = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("{shown}: {e}: {}", String::from_utf8_lossy(&bytes)))
            };
            (status, json)
        })
    }

    /// `{base}/{path}` with the query parameters encoded.
    fn url(&self, path: &str, params: &[(&str, &str)]) -> Url {
        let url = format!("{}/{path}", self.base);
        Url::parse_with_params(&url, params).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    /// `POST {base}/{resourceType}`: the server's status and answer (the
    /// stored resource, or an OperationOutcome), whatever they are.
    pub fn create(&self, resource: &Value) -> (u16, Value) {
        let resource_type = resource["resourceType"].as_str().unwrap_or("Basic");
        let url = self.url(resource_type, &[]);
        self.send(Method::POST, url, Some(resource))
    }

    /// A search's first page: `GET Type?params`, which must answer 200.
    pub fn search(&self, resource_type: &str, params: &[(&str, &str)]) -> Value {
        let url = self.url(resource_type, params);
        let shown = url.to_string();
        let (status, bundle) = self.send(Method::GET, url, None);
        assert_eq!(status, 200, "GET {shown}: {bundle}");
        bundle
    }

    /// How many resources of the type the project holds
    /// (`Type?_summary=count`).
    pub fn count(&self, resource_type: &str) -> u64 {
        let bundle = self.search(resource_type, &[("_summary", "count")]);
        bundle["total"]
            .as_u64()
            .unwrap_or_else(|| panic!("{resource_type}?_summary=count without total: {bundle}"))
    }

    /// The resources holding the identifier (`Type?identifier=system|value`,
    /// the value escaped as Medplum reads it).
    pub fn find(&self, resource_type: &str, system: &str, value: &str) -> Vec<Value> {
        let mut escaped = String::with_capacity(value.len());
        for c in value.chars() {
            if matches!(c, ',' | '|' | '$' | '\\') {
                escaped.push('\\');
            }
            escaped.push(c);
        }
        let identifier = format!("{system}|{escaped}");
        resources(&self.search(resource_type, &[("identifier", &identifier)]))
    }

    /// Every resource of the type, page after page (`_count=1000`, the
    /// `next` links), with `params` added to the first search.
    pub fn all(&self, resource_type: &str, params: &[(&str, &str)]) -> Vec<Value> {
        let mut first = vec![("_count", "1000")];
        first.extend_from_slice(params);
        let mut page = self.search(resource_type, &first);
        let mut found = resources(&page);
        while let Some(next) = link(&page, "next") {
            assert!(
                found.len() <= MOST_RESOURCES,
                "{resource_type}: more than {MOST_RESOURCES} resources, or a next link that never ends"
            );
            let url = Url::parse(&next).unwrap_or_else(|e| panic!("{next}: {e}"));
            let (status, bundle) = self.send(Method::GET, url, None);
            assert_eq!(status, 200, "GET {next}: {bundle}");
            found.extend(resources(&bundle));
            page = bundle;
        }
        found
    }

    /// What a write to the type would change: how many resources it holds
    /// and the newest `meta.lastUpdated` among them. Two snapshots are equal
    /// only when nothing of the type was created, updated or deleted between
    /// them.
    pub fn snapshot(&self, resource_type: &str) -> (u64, Option<String>) {
        let newest = self.search(
            resource_type,
            &[("_sort", "-_lastUpdated"), ("_count", "1")],
        );
        let last = resources(&newest)
            .first()
            .and_then(|r| r["meta"]["lastUpdated"].as_str().map(str::to_owned));
        (self.count(resource_type), last)
    }

    /// Deletes every resource of the type (searches, then one batch of
    /// `DELETE Type/id` per page, until the search comes back empty);
    /// returns how many.
    pub fn delete_all(&self, resource_type: &str) -> u64 {
        let mut deleted = 0;
        // each round empties a page: bounded by the count at the start
        let rounds = self.count(resource_type) / 100 + 2;
        for _ in 0..rounds {
            let page = resources(&self.search(resource_type, &[("_count", "100")]));
            if page.is_empty() {
                return deleted;
            }
            let entries: Vec<Value> = page
                .iter()
                .map(|r| {
                    json!({ "request": { "method": "DELETE",
                        "url": format!("{resource_type}/{}", r["id"].as_str().expect("an id")) } })
                })
                .collect();
            let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": entries });
            let (status, answer) = self.send(Method::POST, self.url("", &[]), Some(&batch));
            assert_eq!(status, 200, "DELETE batch: {answer}");
            for entry in answer["entry"]
                .as_array()
                .expect("a batch-response has entries")
            {
                let status = entry["response"]["status"].as_str().unwrap_or("");
                assert!(status.starts_with('2'), "DELETE in a batch: {entry}");
            }
            deleted += page.len() as u64;
        }
        panic!("{resource_type}: still not empty after {rounds} rounds of deletes");
    }
}

/// The resources of a searchset bundle (its `match` entries).
pub fn resources(bundle: &Value) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"].as_str().unwrap_or("match") == "match")
                .map(|e| e["resource"].clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The bundle's link of that relation.
fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str().map(str::to_owned))
}
