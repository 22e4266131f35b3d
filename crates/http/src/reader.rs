//! Reading a server, never writing to it: the searches `verify` asks (and
//! the identifier search the resolve strategy shares with it).
//!
//! - [`ServerReader::find`]: the resources holding any of a list of
//!   identifiers (`Type?identifier=s|a,s|b,…`, every page; `POST
//!   Type/_search` when the list is too long for a URL);
//! - [`ServerReader::existing`]: which of a list of ids exist
//!   (`Type?_id=a,b,…&_elements=id`);
//! - [`ServerReader::each_in_system`]: every resource with an identifier
//!   in a system (`Type?identifier=s|`), page by page.
//!
//! A transient answer (429, 5xx, a transport failure) is retried with
//! backoff, honouring `Retry-After`; anything else is a [`ReadError`] that
//! names the search, never a value.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use crate::auth::{Auth, AuthState};
use crate::client::{Answer, Http, client_builder};
use crate::outcomes::is_transient;
use crate::quota::Quota;
use crate::stats::SenderStats;
use fhirlift_core::group::{Identity, encode_query_part, escape_search_value};

/// Longest query sent as a GET; longer lists go as `POST Type/_search`.
const MAX_GET_QUERY: usize = 2_000;
/// Pages followed for one identifier search before giving up on it.
const MAX_PAGES: usize = 200;
/// Attempts of one search before its error is final.
const ATTEMPTS: u32 = 8;

/// A search the server did not answer usefully: what was asked and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReadError(pub String);

/// A read-only client of one server, with the run's credentials.
#[derive(Clone)]
pub struct ServerReader {
    http: Arc<Http>,
}

impl ServerReader {
    pub fn new(base_url: &str, auth: Auth, timeout: Duration) -> Result<ServerReader, ReadError> {
        let client = client_builder()
            .gzip(true)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| ReadError(format!("cannot build the HTTP client: {e}")))?;
        let base = base_url.trim_end_matches('/').to_owned();
        Ok(ServerReader {
            http: Arc::new(Http {
                stats: Arc::new(SenderStats::default()),
                auth: AuthState::new(auth, &base),
                client,
                base,
                asynchronous: false,
                async_timeout: Duration::from_secs(60),
            }),
        })
    }

    /// Searches sent so far (each page one).
    pub fn searches(&self) -> u64 {
        self.http.stats.searches.load(Ordering::Relaxed)
    }

    /// The resources holding any of `ids` (all of one type), every page.
    pub async fn find(
        &self,
        resource_type: &str,
        ids: &[&Identity],
    ) -> Result<Vec<Value>, ReadError> {
        let what = || format!("the {resource_type} search by {} identifiers", ids.len());
        retrying(what, || async {
            search_identities(&self.http, resource_type, ids)
                .await
                .map(|(found, _)| found)
        })
        .await
    }

    /// Which of `ids` (server ids of one type) exist.
    pub async fn existing(
        &self,
        resource_type: &str,
        ids: &[&str],
    ) -> Result<HashSet<String>, ReadError> {
        let mut list = String::new();
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                list.push(',');
            }
            encode_query_part(id, &mut list);
        }
        let query = format!("_id={list}&_elements=id&_count={}", ids.len() + 10);
        let what = || format!("the {resource_type} search by {} ids", ids.len());
        let found = retrying(what, || async {
            let first = self.first_page(resource_type, &query).await;
            let mut all = Vec::new();
            follow(&self.http, resource_type, first, MAX_PAGES, |r| all.push(r))
                .await
                .map(|_| all)
        })
        .await?;
        Ok(found
            .iter()
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect())
    }

    /// Every resource of `resource_type` with an identifier in `system`,
    /// handed to `visit` page by page (memory: one page).
    pub async fn each_in_system(
        &self,
        resource_type: &str,
        system: &str,
        mut visit: impl FnMut(Value),
    ) -> Result<(), ReadError> {
        let mut url = format!("{}/{resource_type}?identifier=", self.http.base);
        encode_query_part(&escape_search_value(system), &mut url);
        url.push_str("|&_count=1000");
        let what = || format!("the {resource_type} listing of an identifier system");
        let mut next = Some(url);
        while let Some(page) = next.take() {
            let body = retrying(what, || async {
                match self.http.search_get(&page).await {
                    Answer::Http {
                        status: 200..=299,
                        body,
                        ..
                    } if is_searchset(&body) => Ok(body),
                    Answer::Http {
                        status: 200..=299,
                        body,
                        ..
                    } => Err(not_a_searchset(resource_type, &body)),
                    other => Err(other),
                }
            })
            .await?;
            for entry in body["entry"].as_array().into_iter().flatten() {
                if entry["search"]["mode"]
                    .as_str()
                    .is_none_or(|m| m == "match")
                {
                    visit(entry["resource"].clone());
                }
            }
            next = next_link(&body).map(str::to_owned);
        }
        Ok(())
    }

    async fn first_page(&self, resource_type: &str, query: &str) -> Answer {
        if query.len() > MAX_GET_QUERY {
            let form = query.replace('|', "%7C").replace(',', "%2C");
            self.http
                .post_form(&format!("{}/{resource_type}/_search", self.http.base), form)
                .await
        } else {
            self.http
                .search_get(&format!("{}/{resource_type}?{query}", self.http.base))
                .await
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, or has been tried
/// [`ATTEMPTS`] times; transient answers wait (Retry-After, else backoff).
async fn retrying<T, F, Fut>(what: impl Fn() -> String, attempt: F) -> Result<T, ReadError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, Answer>>,
{
    let mut wait = Duration::from_millis(200);
    for tried in 1..=ATTEMPTS {
        let answer = match attempt().await {
            Ok(found) => return Ok(found),
            Err(answer) => answer,
        };
        let (transient, retry_after, why) = match &answer {
            Answer::Transport(why) => (true, None, why.clone()),
            Answer::AuthRefused(why) => (false, None, why.clone()),
            Answer::Http {
                status,
                retry_after,
                body,
                ..
            } => (
                is_transient(*status),
                *retry_after,
                format!(
                    "the server answered {status} ({})",
                    crate::outcomes::describe_body(body)
                ),
            ),
        };
        if !transient || tried == ATTEMPTS {
            return Err(ReadError(format!("{}: {why}", what())));
        }
        tokio::time::sleep(retry_after.unwrap_or(wait).min(Duration::from_secs(60))).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    }
    Err(ReadError(format!("{}: no answer", what())))
}

/// Finds the resources holding any of `ids` (one type), every page: one
/// attempt, its failure as the server's answer (the caller retries).
pub(crate) async fn search_identities(
    http: &Http,
    resource_type: &str,
    ids: &[&Identity],
) -> Result<(Vec<Value>, Vec<Quota>), Answer> {
    let mut tokens = String::new();
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            tokens.push(',');
        }
        encode_query_part(&escape_search_value(&id.system), &mut tokens);
        tokens.push('|');
        encode_query_part(&escape_search_value(&id.value), &mut tokens);
    }
    let count = (ids.len() * 2 + 10).min(1000);
    let query = format!("identifier={tokens}&_count={count}");
    let first = if query.len() > MAX_GET_QUERY {
        // the raw `|` and `,` are fine in a form body, but encode them
        // anyway: nothing in it is then open to a server's reading
        let form = query.replace('|', "%7C").replace(',', "%2C");
        http.post_form(&format!("{}/{resource_type}/_search", http.base), form)
            .await
    } else {
        http.search_get(&format!("{}/{resource_type}?{query}", http.base))
            .await
    };
    let mut resources = Vec::new();
    let quotas = follow(http, resource_type, first, MAX_PAGES, |r| resources.push(r)).await?;
    Ok((resources, quotas))
}

/// Reads a search's answer and its next pages (at most `pages`), handing
/// each matched resource to `visit`; the last page's quotas.
async fn follow(
    http: &Http,
    resource_type: &str,
    mut answer: Answer,
    pages: usize,
    mut visit: impl FnMut(Value),
) -> Result<Vec<Quota>, Answer> {
    for _ in 0..pages {
        let (body, quotas) = match answer {
            Answer::Http {
                status: 200..=299,
                body,
                quotas,
                ..
            } if is_searchset(&body) => (body, quotas),
            Answer::Http {
                status: 200..=299,
                body,
                ..
            } => return Err(not_a_searchset(resource_type, &body)),
            other => return Err(other),
        };
        for entry in body["entry"].as_array().into_iter().flatten() {
            if entry["search"]["mode"]
                .as_str()
                .is_none_or(|m| m == "match")
            {
                visit(entry["resource"].clone());
            }
        }
        match next_link(&body) {
            Some(url) => answer = http.search_get(url).await,
            None => return Ok(quotas),
        }
    }
    Err(Answer::Transport(format!(
        "a {resource_type} search went on past {pages} pages"
    )))
}

pub(crate) fn next_link(body: &Value) -> Option<&str> {
    body["link"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
}

pub(crate) fn is_searchset(body: &Value) -> bool {
    body["resourceType"] == "Bundle" && body["type"] == "searchset"
}

/// A search answered 2xx with something else (an empty body, a proxy's
/// HTML page, another resource): an ambiguous failure, retried; never
/// read as "nothing stored", which would write a duplicate.
pub(crate) fn not_a_searchset(resource_type: &str, body: &Value) -> Answer {
    Answer::Transport(not_a_searchset_reason(resource_type, body))
}

/// Why [`not_a_searchset`].
pub(crate) fn not_a_searchset_reason(resource_type: &str, body: &Value) -> String {
    format!(
        "a {resource_type} search was answered with {}, not a searchset Bundle (a proxy \
         or a broken server?): not read as \"nothing stored\"",
        crate::outcomes::describe_body(body)
    )
}
