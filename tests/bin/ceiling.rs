//! `fhirlift-ceiling`: the server's plain ceiling for a migration's resources.
//!
//! ```text
//! fhirlift-ceiling --server URL --client-id ID --client-secret-env VAR
//!                  --config DIR/migration.yaml [--form batch|transaction]
//!                  [--chunk 100] [--concurrency 8] [--work DIR] [--report FILE]
//! ```
//!
//! It writes THE SAME resources fhirlift would, in the cheapest way a server
//! takes them: plain `POST` entries, no conditional write, no search. The
//! resources come from `fhirlift migrate --dry-run` of the migration (run in
//! process, with the conditional strategy, into `--work`, default
//! `DIR/ceiling-dry-run`), so they are the mapping's own JSON. Every entry of
//! every request bundle (and of the transactions nested in them) becomes one
//! `POST Type` of its resource; references are rewritten to `Type/<id>` with
//! the ids the server gave: a conditional reference
//! (`Patient?identifier=system|value`) by the resource with that first
//! identifier, a `urn:uuid:` one by the entry with that `fullUrl`. So the
//! resources go in levels: those that refer to nothing (Patients) first,
//! then those referring only to them (Conditions, Encounters), then the rest
//! (ClinicalImpressions), each level in bundles of `--chunk` entries with
//! `--concurrency` in flight, sent as `batch` or as `transaction`.
//!
//! Prints the resources per type and level, and the total time and rate
//! (token and dry run not counted); `--report FILE` writes them as JSON.
//! The client secret comes from the environment and is never printed.

#[path = "ceiling/plan.rs"]
mod plan;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use crate::plan::{Plan, dry_run, read_bundles};

/// Attempts per request (and per entry that failed for a passing reason).
const MAX_ATTEMPTS: u32 = 8;

fn main() -> std::process::ExitCode {
    if std::env::var_os("FHIRLIFT_LOG").is_none() {
        // the in-process dry run logs only warnings, unless asked otherwise
        // SAFETY: no other thread runs yet
        unsafe { std::env::set_var("FHIRLIFT_LOG", "warn") };
    }
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fhirlift-ceiling: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The command line.
struct Options {
    server: String,
    client_id: String,
    client_secret: String,
    config: PathBuf,
    form: Form,
    chunk: usize,
    concurrency: usize,
    work: Option<PathBuf>,
    report: Option<PathBuf>,
}

/// How each chunk of entries is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Form {
    Batch,
    Transaction,
}

impl Form {
    fn as_str(self) -> &'static str {
        match self {
            Form::Batch => "batch",
            Form::Transaction => "transaction",
        }
    }
}

const USAGE: &str = "usage: fhirlift-ceiling --server URL --client-id ID --client-secret-env VAR \
                     --config DIR/migration.yaml [--form batch|transaction] [--chunk 100] \
                     [--concurrency 8] [--work DIR] [--report FILE]";

/// Reads the command line; the secret from the variable `--client-secret-env` names.
fn options() -> anyhow::Result<Options> {
    let mut args = std::env::args().skip(1);
    let (mut server, mut client_id, mut secret_var, mut config) = (None, None, None, None);
    let (mut form, mut chunk, mut concurrency) = (Form::Batch, 100usize, 8usize);
    let (mut work, mut report) = (None, None);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |v: &str| -> anyhow::Result<usize> {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("{flag} takes a positive number (got {v:?})"))
        };
        match flag.as_str() {
            "--server" => server = Some(value.trim_end_matches('/').to_owned()),
            "--client-id" => client_id = Some(value),
            "--client-secret-env" => secret_var = Some(value),
            "--config" | "-c" => config = Some(PathBuf::from(value)),
            "--form" => {
                form = match value.as_str() {
                    "batch" => Form::Batch,
                    "transaction" => Form::Transaction,
                    other => bail!("--form takes batch or transaction (got {other:?})"),
                }
            }
            "--chunk" => chunk = number(&value)?,
            "--concurrency" => concurrency = number(&value)?,
            "--work" => work = Some(PathBuf::from(value)),
            "--report" => report = Some(PathBuf::from(value)),
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    let secret_var =
        secret_var.with_context(|| format!("--client-secret-env is required\n{USAGE}"))?;
    let client_secret = std::env::var(&secret_var)
        .map_err(|_| {
            anyhow!("the environment variable {secret_var} (the client secret) is not set")
        })?
        .trim()
        .to_owned();
    Ok(Options {
        server: server.with_context(|| format!("--server is required\n{USAGE}"))?,
        client_id: client_id.with_context(|| format!("--client-id is required\n{USAGE}"))?,
        client_secret,
        config: config.with_context(|| format!("--config is required\n{USAGE}"))?,
        form,
        chunk,
        concurrency,
        work,
        report,
    })
}

fn run() -> anyhow::Result<()> {
    let options = options()?;
    let work = options.work.clone().unwrap_or_else(|| {
        options
            .config
            .parent()
            .unwrap_or(Path::new("."))
            .join("ceiling-dry-run")
    });
    dry_run(&options.config, &work)?;
    let items = read_bundles(&work)?;
    let plan = Plan::new(items)?;
    let mut by_type: BTreeMap<&str, u64> = BTreeMap::new();
    for item in &plan.items {
        *by_type.entry(item.resource_type.as_str()).or_default() += 1;
    }
    let shown: Vec<String> = by_type.iter().map(|(t, n)| format!("{t} {n}")).collect();
    println!(
        "ceiling: {} resources from the dry run of {} ({}), in {} levels; {} bundles of {} plain POSTs, {} in flight",
        plan.items.len(),
        options.config.display(),
        shown.join(", "),
        plan.levels.len(),
        options.form.as_str(),
        options.chunk,
        options.concurrency
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(send_all(&options, &plan))?;
    let secs = outcome.elapsed.as_secs_f64();
    let rate = plan.items.len() as f64 / secs.max(1e-9);
    println!(
        "ceiling ({}): {} resources in {:.2} s = {:.0} resources/s ({} requests, {} entries resent)",
        options.form.as_str(),
        plan.items.len(),
        secs,
        rate,
        outcome.requests,
        outcome.resent
    );
    if let Some(path) = &options.report {
        let report = json!({
            "form": options.form.as_str(),
            "resources": plan.items.len(),
            "by_type": by_type,
            "seconds": secs,
            "resources_per_second": rate,
            "requests": outcome.requests,
            "resent": outcome.resent,
            "levels": outcome.levels,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write the report {}", path.display()))?;
    }
    Ok(())
}

/// What sending took.
struct Outcome {
    elapsed: Duration,
    requests: u64,
    resent: u64,
    levels: Vec<Value>,
}

/// The HTTP side shared by the sending tasks.
struct Client {
    http: reqwest::Client,
    server: String,
    token: String,
    form: Form,
}

/// Gets a token, then sends level after level; the clock runs from the
/// first request to the last answer.
async fn send_all(options: &Options, plan: &Plan) -> anyhow::Result<Outcome> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .context("cannot build the HTTP client")?;
    let token = token(&http, options).await?;
    let client = Arc::new(Client {
        http,
        server: options.server.clone(),
        token,
        form: options.form,
    });
    let mut ids: Vec<Option<String>> = vec![None; plan.items.len()];
    let (mut requests, mut resent) = (0u64, 0u64);
    let mut levels = Vec::new();
    let started = Instant::now();
    for (n, level) in plan.levels.iter().enumerate() {
        let level_started = Instant::now();
        let semaphore = Arc::new(tokio::sync::Semaphore::new(options.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in level.chunks(options.chunk) {
            let entries: Vec<(usize, String, Value)> = chunk
                .iter()
                .map(|&i| {
                    Ok((
                        i,
                        plan.items[i].resource_type.clone(),
                        plan.resource(i, &ids)?,
                    ))
                })
                .collect::<anyhow::Result<_>>()?;
            let permit = semaphore.clone().acquire_owned().await?;
            let client = client.clone();
            tasks.spawn(async move {
                let sent = send_chunk(&client, entries).await;
                drop(permit);
                sent
            });
        }
        let mut types: BTreeMap<String, u64> = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            let sent = joined.context("a sending task failed")??;
            requests += sent.requests;
            resent += sent.resent;
            for (i, id) in sent.ids {
                *types
                    .entry(plan.items[i].resource_type.clone())
                    .or_default() += 1;
                ids[i] = Some(id);
            }
        }
        let secs = level_started.elapsed().as_secs_f64();
        let shown: Vec<String> = types.iter().map(|(t, n)| format!("{t} {n}")).collect();
        println!(
            "  level {n}: {} in {secs:.2} s ({:.0}/s)",
            shown.join(", "),
            level.len() as f64 / secs.max(1e-9)
        );
        levels.push(json!({ "level": n, "resources": types, "seconds": secs }));
    }
    Ok(Outcome {
        elapsed: started.elapsed(),
        requests,
        resent,
        levels,
    })
}

/// A client-credentials token from the server's token endpoint
/// (`.well-known/smart-configuration`, else `<origin>/oauth2/token`).
async fn token(http: &reqwest::Client, options: &Options) -> anyhow::Result<String> {
    let discovered = async {
        let answer = http
            .get(format!(
                "{}/.well-known/smart-configuration",
                options.server
            ))
            .send()
            .await
            .ok()?;
        let config: Value = serde_json::from_slice(&answer.bytes().await.ok()?).ok()?;
        config.get("token_endpoint")?.as_str().map(str::to_owned)
    }
    .await;
    let endpoint = match discovered {
        Some(url) => url,
        None => {
            let origin = options
                .server
                .find("/fhir/")
                .map_or(options.server.as_str(), |i| &options.server[..i]);
            format!("{origin}/oauth2/token")
        }
    };
    let answer = http
        .post(&endpoint)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", options.client_id.as_str()),
            ("client_secret", options.client_secret.as_str()),
        ])
        .send()
        .await
        .with_context(|| format!("cannot reach the token endpoint {endpoint}"))?;
    let status = answer.status();
    let body: Value = serde_json::from_slice(&answer.bytes().await?).unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("the token endpoint {endpoint} answered {status}");
    }
    body.get("access_token")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("the token endpoint {endpoint} gave no access_token"))
}

/// What one chunk gave: the server's id per item.
struct Sent {
    ids: Vec<(usize, String)>,
    requests: u64,
    resent: u64,
}

/// POSTs the entries as one bundle; entries that failed for a passing
/// reason (409, 429, 5xx) are sent again in a bundle of their own.
async fn send_chunk(
    client: &Client,
    mut entries: Vec<(usize, String, Value)>,
) -> anyhow::Result<Sent> {
    let mut sent = Sent {
        ids: Vec::with_capacity(entries.len()),
        requests: 0,
        resent: 0,
    };
    for attempt in 1..=MAX_ATTEMPTS {
        let bundle = json!({
            "resourceType": "Bundle",
            "type": client.form.as_str(),
            "entry": entries.iter().map(|(_, t, resource)| json!({
                "request": { "method": "POST", "url": t },
                "resource": resource,
            })).collect::<Vec<_>>(),
        });
        sent.requests += 1;
        let answer = match post(client, &bundle).await {
            Ok(answer) => answer,
            Err(Failure::Passing(why)) if attempt < MAX_ATTEMPTS => {
                eprintln!("fhirlift-ceiling: {why}; sending again");
                backoff(attempt).await;
                continue;
            }
            Err(Failure::Passing(why) | Failure::Final(why)) => bail!("{why}"),
        };
        let answers = answer
            .get("entry")
            .and_then(Value::as_array)
            .context("the bundle response has no entries")?;
        if answers.len() != entries.len() {
            bail!(
                "the bundle response has {} entries for {} sent",
                answers.len(),
                entries.len()
            );
        }
        let mut again = Vec::new();
        for ((i, t, resource), answer) in entries.into_iter().zip(answers) {
            let response = answer.get("response");
            let status = response
                .and_then(|r| r.get("status"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let code: u16 = status
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if (200..300).contains(&code) {
                let location = response
                    .and_then(|r| r.get("location"))
                    .and_then(Value::as_str)
                    .with_context(|| format!("a {t} was created without a location"))?;
                sent.ids.push((i, id_from_location(location, &t)?));
            } else if code == 409 || code == 429 || code >= 500 {
                again.push((i, t, resource));
            } else {
                bail!(
                    "the server refused a {t}: {status:?} {}",
                    answer
                        .get("response")
                        .and_then(|r| r.get("outcome"))
                        .map_or(String::new(), Value::to_string)
                );
            }
        }
        if again.is_empty() {
            return Ok(sent);
        }
        sent.resent += again.len() as u64;
        entries = again;
        backoff(attempt).await;
    }
    bail!(
        "{} entries still failed after {MAX_ATTEMPTS} attempts",
        entries.len()
    )
}

/// Why a request failed: worth another attempt, or not.
enum Failure {
    Passing(String),
    Final(String),
}

/// POSTs a bundle to the base URL; the parsed response bundle.
async fn post(client: &Client, bundle: &Value) -> Result<Value, Failure> {
    let body = serde_json::to_vec(bundle).map_err(|e| Failure::Final(e.to_string()))?;
    let answer = client
        .http
        .post(&client.server)
        .bearer_auth(&client.token)
        .header("content-type", "application/fhir+json")
        .header("accept", "application/fhir+json")
        .body(body)
        .send()
        .await
        .map_err(|e| Failure::Passing(format!("request failed: {e}")))?;
    let status = answer.status();
    let bytes = answer
        .bytes()
        .await
        .map_err(|e| Failure::Passing(format!("reading the answer failed: {e}")))?;
    if !status.is_success() {
        let why = format!(
            "the server answered {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
        );
        let code = status.as_u16();
        return Err(if code == 409 || code == 429 || code >= 500 {
            Failure::Passing(why)
        } else {
            Failure::Final(why)
        });
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| Failure::Final(format!("the answer is not JSON: {e}")))
}

/// `Patient/<id>/_history/<v>` (possibly absolute) as `<id>`.
fn id_from_location(location: &str, resource_type: &str) -> anyhow::Result<String> {
    let segments: Vec<&str> = location.split('/').collect();
    segments
        .windows(2)
        .find(|pair| pair[0] == resource_type && !pair[1].is_empty())
        .map(|pair| pair[1].to_owned())
        .with_context(|| format!("the location {location:?} names no {resource_type} id"))
}

/// 100 ms, 200 ms, ... up to 5 s.
async fn backoff(attempt: u32) {
    let ms = (100u64 << attempt.min(6)).min(5_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
