//! `type: twitter` — posts from X's API v2: the filtered stream, or recent search polled.
//!
//! **`mode: stream`** reads `GET /2/tweets/search/stream`. The `rules` are synced at start:
//! the rules already on the stream are read (`GET /2/tweets/search/stream/rules`), missing ones
//! are checked with `dry_run=true` (a rule X refuses is a start-up error naming it), stale ones
//! are deleted and missing ones added. The stream is one JSON object per line with blank
//! keep-alive lines about every 20 s; `stall_timeout` (30 s) of silence counts as a dead
//! connection.
//! Reconnects follow X's rules: after network errors (and stalls, ends of stream, operational
//! disconnects) waits grow linearly by `network_step` up to `network_max`; after HTTP errors
//! exponentially from `http_initial` up to `http_max`; after 429 or a `ConnectionException`
//! exponentially from `rate_limit_initial` (or until `x-rate-limit-reset` once no requests
//! remain: a TooManyConnections 429 with requests remaining does not wait out the 15-minute
//! window). 401/403 fail the run at once. Duplicates (the last 100,000 ids) and unknown message types are skipped.
//!
//! **`mode: recent_search`** polls `GET /2/tweets/search/recent` every `interval` with
//! `since_id` and follows `next_token` through the pages, for accounts without stream access.
//!
//! **Record**: the post's fields as X sends them (`id`, `text`, and the `tweet_fields`), its
//! author's `user_fields` as `author_<field>` (from `includes.users`), and with the stream the
//! tags of the rules it matched as `matching_tags`. **Key**: the post id. **Record time**:
//! `created_at`.
//!
//! **Offset**: stream (source partition `twitter:stream`): `{last_id}`, the last post
//! delivered; the filtered stream cannot replay what was posted while the source was down, so
//! a restart resumes at the live edge. Recent search (`twitter:search`): `{since_id}` once a
//! scan is read to its end; within a scan `{since_id, newest_id, page, last_id}`, so a restart
//! asks for the page it was in again and skips the posts delivered from it (ids at or above
//! `last_id`: a scan goes from the newest post down).

use super::client::{
    allowance_spent, at_base, endpoint, excerpt, server_wait, HttpClient, HttpSettings,
};
use super::generic::{time_millis, Recent};
use reqwest::StatusCode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sluice_core::{
    async_trait, BadInput, ConnectorError, FieldError, Payload, Record, Secret, Source,
    SourceBuildContext, SourceConfig, SourceRecord,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

sluice_core::register_plugin!(Source, "twitter", TwitterSourceConfig);

const STREAM_PARTITION: &str = "twitter:stream";
const SEARCH_PARTITION: &str = "twitter:search";

/// Posts from X (Twitter) API v2.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TwitterSourceConfig {
    /// App-only bearer token of the X developer app (required to run; `sluice validate`
    /// accepts it empty). Never logged or stored.
    pub bearer_token: Secret,
    /// `stream`: the filtered stream, with `rules`. `recent_search`: polls recent search
    /// with `query` (accounts without stream access).
    #[serde(default)]
    pub mode: Mode,
    /// Rules of the filtered stream (`stream`), synced at start: missing ones are added, rules
    /// on the stream that are not listed here are deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<StreamRule>,
    /// Search query (`recent_search`), in X's rule syntax; default: the `rules` joined with
    /// `OR` (their tags are then not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Longest rule or query X takes from this account, in characters (default 512, X's limit
    /// for most access levels; higher ones allow 1,024 or more): longer ones are refused by
    /// `validate` rather than by X at start.
    #[serde(default = "default_query_limit")]
    pub query_limit: usize,
    /// `tweet.fields` asked for: fields of each post besides `id` and `text`.
    #[serde(default = "default_tweet_fields")]
    pub tweet_fields: Vec<String>,
    /// `expansions` asked for; `author_id` brings the author into `includes.users`.
    #[serde(default = "default_expansions")]
    pub expansions: Vec<String>,
    /// `user.fields` asked for: each becomes `author_<field>` on the record.
    #[serde(default = "default_user_fields")]
    pub user_fields: Vec<String>,
    /// Posts per page of recent search (10 to 100).
    #[serde(default = "default_max_results")]
    pub max_results: u32,
    /// Wait between recent-search scans.
    #[serde(default = "default_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// Silence on the stream (no post, no keep-alive) after which the connection is taken for
    /// dead and opened again (default 30 s); X sends a keep-alive every 20 s, sometimes a little
    /// late, so a timeout of 20 s would drop live connections (tweepy keeps a margin too).
    #[serde(default = "default_stall_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub stall_timeout: Duration,
    /// Waits before reconnecting the stream.
    #[serde(default)]
    pub reconnect: Reconnect,
    /// Where the API is (a proxy, a test server).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Timeouts, retries, backoff and request budget of the rules and search requests.
    #[serde(default)]
    pub http: HttpSettings,
}

/// Which API the source reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Stream,
    RecentSearch,
}

/// A filtered-stream rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamRule {
    /// The rule, in X's rule syntax (`(macron OR lepen) lang:fr -is:retweet`).
    pub value: String,
    /// Tag kept on the posts it matches (`matching_tags`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// Reconnect waits of the stream, as X documents them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reconnect {
    /// After a network error: this much longer than the last wait.
    #[serde(default = "default_network_step", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub network_step: Duration,
    /// Longest wait after network errors.
    #[serde(default = "default_network_max", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub network_max: Duration,
    /// First wait after an HTTP error; doubles each time.
    #[serde(default = "default_http_initial", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub http_initial: Duration,
    /// Longest wait after HTTP errors.
    #[serde(default = "default_http_max", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub http_max: Duration,
    /// First wait after 429 (too many requests or connections); doubles each time.
    #[serde(default = "default_rate_limit_initial", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub rate_limit_initial: Duration,
    /// Longest wait after 429.
    #[serde(default = "default_rate_limit_max", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub rate_limit_max: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            network_step: default_network_step(),
            network_max: default_network_max(),
            http_initial: default_http_initial(),
            http_max: default_http_max(),
            rate_limit_initial: default_rate_limit_initial(),
            rate_limit_max: default_rate_limit_max(),
        }
    }
}

fn default_tweet_fields() -> Vec<String> {
    ["created_at", "author_id", "lang", "public_metrics"]
        .map(String::from)
        .to_vec()
}
fn default_expansions() -> Vec<String> {
    vec!["author_id".into()]
}
fn default_user_fields() -> Vec<String> {
    ["username", "name"].map(String::from).to_vec()
}
fn default_max_results() -> u32 {
    100
}
fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_query_limit() -> usize {
    512
}
fn default_stall_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_network_step() -> Duration {
    Duration::from_millis(250)
}
fn default_network_max() -> Duration {
    Duration::from_secs(16)
}
fn default_http_initial() -> Duration {
    Duration::from_secs(5)
}
fn default_http_max() -> Duration {
    Duration::from_secs(320)
}
fn default_rate_limit_initial() -> Duration {
    Duration::from_secs(60)
}
fn default_rate_limit_max() -> Duration {
    Duration::from_secs(960)
}
fn default_base_url() -> String {
    "https://api.x.com".into()
}

impl TwitterSourceConfig {
    /// The recent-search query: `query`, else the rules joined with `OR`.
    /// Why `query` is longer than X takes, if it is.
    fn too_long(&self, query: &str) -> Option<String> {
        let length = query.chars().count();
        (length > self.query_limit).then(|| {
            format!(
                "is {length} characters; X takes at most {} (`query_limit`, 512 for most access levels)",
                self.query_limit
            )
        })
    }

    fn search_query(&self) -> String {
        match &self.query {
            Some(query) => query.clone(),
            None if self.rules.len() == 1 => self.rules[0].value.clone(),
            None => self
                .rules
                .iter()
                .map(|r| format!("({})", r.value))
                .collect::<Vec<_>>()
                .join(" OR "),
        }
    }
}

#[async_trait]
#[typetag::serde(name = "twitter")]
impl SourceConfig for TwitterSourceConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        match self.mode {
            Mode::Stream => {
                if self.rules.is_empty() {
                    errors.push(FieldError::new(
                        "rules",
                        "`mode: stream` needs at least one rule",
                    ));
                }
                for (i, rule) in self.rules.iter().enumerate() {
                    if rule.value.trim().is_empty() {
                        errors.push(FieldError::new(
                            format!("rules[{i}].value"),
                            "must not be empty",
                        ));
                    }
                    if let Some(e) = self.too_long(&rule.value) {
                        errors.push(FieldError::new(format!("rules[{i}].value"), e));
                    }
                }
                if self.query.is_some() {
                    errors.push(FieldError::new(
                        "query",
                        "is for `mode: recent_search`; the stream uses `rules`",
                    ));
                }
            }
            Mode::RecentSearch => {
                if let Some(e) = self.too_long(&self.search_query()) {
                    errors.push(FieldError::new("query", e));
                }
                if self.search_query().trim().is_empty() {
                    errors.push(FieldError::new(
                        "query",
                        "`mode: recent_search` needs a query (or `rules`)",
                    ));
                }
            }
        }
        if !(10..=100).contains(&self.max_results) {
            errors.push(FieldError::new("max_results", "must be 10 to 100"));
        }
        if let Err(e) = reqwest::Url::parse(&self.base_url) {
            errors.push(FieldError::new("base_url", format!("not a URL: {e}")));
        }
        for (field, value) in [
            ("interval", self.interval),
            ("stall_timeout", self.stall_timeout),
        ] {
            if value.is_zero() {
                errors.push(FieldError::new(field, "must be longer than 0"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    async fn build(&self, ctx: SourceBuildContext) -> Result<Box<dyn Source>, ConnectorError> {
        // Checked here, not in `validate`: a pipeline file validates without its secrets set.
        if self.bearer_token.expose().trim().is_empty() {
            return Err(ConnectorError::user("`bearer_token` is empty").with_field("bearer_token"));
        }
        let api = Api {
            client: HttpClient::new(self.http.clone(), "`bearer_token` (the app's bearer token)")?
                .reporting_to(ctx.metrics.clone()),
            config: Arc::new(self.clone()),
        };
        let mut recent = Recent::default();
        match self.mode {
            Mode::Stream => {
                let last_id = ctx
                    .offsets
                    .get(STREAM_PARTITION)
                    .and_then(|o| o["last_id"].as_str())
                    .map(String::from);
                if let Some(id) = &last_id {
                    recent.insert(id);
                }
                // The stream's connection has no overall timeout: it is meant to stay open.
                let streaming = reqwest::Client::builder()
                    .connect_timeout(self.http.connect_timeout)
                    .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| {
                        ConnectorError::internal(format!("cannot build the HTTP client: {e}"))
                    })?;
                Ok(Box::new(StreamSource {
                    api,
                    rules_synced: false,
                    streaming,
                    response: None,
                    pending: Vec::new(),
                    failures: Failures::default(),
                    recent,
                    last_id,
                    dropped: None,
                    buffered: VecDeque::new(),
                }))
            }
            Mode::RecentSearch => {
                let scan = Scan::from_offset(ctx.offsets.get(SEARCH_PARTITION));
                Ok(Box::new(SearchSource {
                    api,
                    scan,
                    due: None,
                    recent,
                    buffered: VecDeque::new(),
                }))
            }
        }
    }
}

/// The API calls both modes share.
struct Api {
    client: HttpClient,
    config: Arc<TwitterSourceConfig>,
}

impl Api {
    fn url(&self, path: &str) -> Result<reqwest::Url, ConnectorError> {
        at_base(&self.config.base_url, path)
    }

    /// `tweet.fields`, `expansions` and `user.fields`, those that are set.
    fn fields(&self, url: &mut reqwest::Url) {
        let mut query = url.query_pairs_mut();
        for (name, values) in [
            ("tweet.fields", &self.config.tweet_fields),
            ("expansions", &self.config.expansions),
            ("user.fields", &self.config.user_fields),
        ] {
            if !values.is_empty() {
                query.append_pair(name, &values.join(","));
            }
        }
    }

    /// Sends `body` (or a GET without one) and returns the answer's JSON.
    async fn call(&self, url: reqwest::Url, body: Option<Value>) -> Result<Value, ConnectorError> {
        let method = if body.is_some() { "POST" } else { "GET" };
        let shown = endpoint(method, &url);
        let token = self.config.bearer_token.clone();
        let fetched = self
            .client
            .fetch(&shown, |client| {
                let request = match &body {
                    Some(body) => client.post(url.clone()).json(body),
                    None => client.get(url.clone()),
                };
                request.bearer_auth(token.expose())
            })
            .await?;
        serde_json::from_slice(&fetched.body).map_err(|e| {
            ConnectorError::external(format!(
                "{shown} answered with a body that is not JSON ({e}): {}",
                excerpt(&fetched.body)
            ))
        })
    }

    /// Makes the stream's rules those of the config: stale ones deleted, missing ones added
    /// after X accepted them in a dry run.
    async fn sync_rules(&self) -> Result<(), ConnectorError> {
        let rules_url = self.url("/2/tweets/search/stream/rules")?;
        let current = self.call(rules_url.clone(), None).await?;
        let existing: Vec<(String, StreamRule)> = current["data"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|rule| {
                let id = rule["id"].as_str()?.to_string();
                let value = rule["value"].as_str()?.to_string();
                let tag = rule["tag"].as_str().map(String::from);
                Some((id, StreamRule { value, tag }))
            })
            .collect();
        let wanted = &self.config.rules;
        let stale: Vec<&(String, StreamRule)> = existing
            .iter()
            .filter(|(_, rule)| !wanted.contains(rule))
            .collect();
        let missing: Vec<&StreamRule> = wanted
            .iter()
            .filter(|rule| !existing.iter().any(|(_, r)| r == *rule))
            .collect();
        if !missing.is_empty() {
            let add = json!({ "add": missing });
            let mut dry_run = rules_url.clone();
            dry_run.query_pairs_mut().append_pair("dry_run", "true");
            let checked = self.call(dry_run, Some(add.clone())).await?;
            // A rule that only changes its tag is still on the stream during the dry run.
            let refused = refused_rules(&checked)
                .into_iter()
                .find(|(value, title, _)| {
                    !(title == "DuplicateRule" && stale.iter().any(|(_, r)| r.value == *value))
                });
            if let Some((value, title, details)) = refused {
                let index = wanted.iter().position(|r| r.value == value).unwrap_or(0);
                return Err(ConnectorError::user(format!(
                    "X refused the stream rule `rules[{index}].value`, `{value}`: {title}{}",
                    if details.is_empty() {
                        String::new()
                    } else {
                        format!(" ({details})")
                    }
                ))
                .with_field(&format!("rules[{index}].value")));
            }
            if !stale.is_empty() {
                self.delete_rules(&rules_url, &stale).await?;
            }
            let added = self.call(rules_url.clone(), Some(add)).await?;
            if let Some((value, title, details)) = refused_rules(&added).into_iter().next() {
                return Err(ConnectorError::external(format!(
                    "X refused the stream rule `{value}` it had accepted in a dry run: {title} ({details})"
                )));
            }
        } else if !stale.is_empty() {
            self.delete_rules(&rules_url, &stale).await?;
        }
        tracing::info!(
            rules = wanted.len(),
            added = missing.len(),
            deleted = stale.len(),
            "stream rules synced"
        );
        Ok(())
    }

    async fn delete_rules(
        &self,
        rules_url: &reqwest::Url,
        stale: &[&(String, StreamRule)],
    ) -> Result<(), ConnectorError> {
        let ids: Vec<&str> = stale.iter().map(|(id, _)| id.as_str()).collect();
        for (_, rule) in stale {
            tracing::info!(rule = %rule.value, "deleting a stream rule the config no longer has");
        }
        self.call(rules_url.clone(), Some(json!({ "delete": { "ids": ids } })))
            .await?;
        Ok(())
    }

    /// The record for one post of a response: its fields, its author's as `author_<field>`,
    /// and the tags of the rules it matched. `None` when `data` is not a post.
    fn record(&self, data: &Value, includes: &Value, matching: Option<&Value>) -> Option<Record> {
        let post = data.as_object()?;
        let id = post.get("id")?.as_str()?;
        let mut value: Map<String, Value> = post.clone();
        if let Some(author) = post.get("author_id").and_then(Value::as_str) {
            let user = includes["users"]
                .as_array()
                .and_then(|users| users.iter().find(|u| u["id"].as_str() == Some(author)));
            for field in &self.config.user_fields {
                let found = user.and_then(|u| u.get(field)).cloned();
                value.insert(format!("author_{field}"), found.unwrap_or(Value::Null));
            }
        }
        if let Some(matching) = matching {
            let tags = matching
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(|rule| rule["tag"].as_str())
                .map(|tag| Value::String(tag.into()))
                .collect();
            value.insert("matching_tags".into(), Value::Array(tags));
        }
        let timestamp = post.get("created_at").and_then(time_millis);
        let mut record = Record::new(Value::Object(value)).with_key(id);
        record.timestamp = timestamp;
        Some(record)
    }

    fn bad(&self, partition: &str, offset: Value, message: String, raw: Vec<u8>) -> SourceRecord {
        SourceRecord {
            partition: partition.into(),
            offset,
            position: None,
            payload: Payload::Bad(BadInput {
                raw,
                message: format!("twitter: {message}"),
                location: self.config.base_url.clone(),
                ..BadInput::default()
            }),
        }
    }
}

/// `(value, title, details)` of each rule an answer to an `add` refused.
fn refused_rules(answer: &Value) -> Vec<(String, String, String)> {
    answer["errors"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let details = match &e["details"] {
                Value::Array(items) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; "),
                other => other.as_str().unwrap_or_default().to_string(),
            };
            (
                e["value"].as_str().unwrap_or_default().to_string(),
                e["title"].as_str().unwrap_or("refused").to_string(),
                details,
            )
        })
        .collect()
}

/// Reconnect attempts in a row since the stream last delivered something, per kind of failure.
#[derive(Debug, Default)]
struct Failures {
    network: u32,
    http: u32,
    rate_limited: u32,
}

/// Why the stream must be opened again.
#[derive(Debug)]
enum Dropped {
    Network(String),
    Http(String),
    /// The reason, and the wait the server asked for.
    RateLimited(String, Option<Duration>),
}

impl Failures {
    /// The wait before the next attempt after `dropped`, per X's reconnect rules.
    fn wait(&mut self, dropped: &Dropped, rules: &Reconnect) -> Duration {
        let doubling = |initial: Duration, attempt: u32, max: Duration| {
            initial
                .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
                .min(max)
        };
        match dropped {
            Dropped::Network(_) => {
                self.network += 1;
                rules
                    .network_step
                    .saturating_mul(self.network)
                    .min(rules.network_max)
            }
            Dropped::Http(_) => {
                self.http += 1;
                doubling(rules.http_initial, self.http, rules.http_max)
            }
            Dropped::RateLimited(_, told) => {
                self.rate_limited += 1;
                let backoff = doubling(
                    rules.rate_limit_initial,
                    self.rate_limited,
                    rules.rate_limit_max,
                );
                told.map_or(backoff, |told| told.max(backoff).min(rules.rate_limit_max))
            }
        }
    }
}

struct StreamSource {
    api: Api,
    /// The rules were synced (the first poll does it: a run that cannot fails with exit 1,
    /// as every refusal of the API does).
    rules_synced: bool,
    /// Client without an overall timeout, for the stream's long-lived connection.
    streaming: reqwest::Client,
    response: Option<reqwest::Response>,
    /// Bytes of a line not yet complete.
    pending: Vec<u8>,
    failures: Failures,
    recent: Recent,
    /// The last post delivered (the offset).
    last_id: Option<String>,
    /// Why the stream must be opened again, before reading on.
    dropped: Option<Dropped>,
    buffered: VecDeque<SourceRecord>,
}

#[async_trait]
impl Source for StreamSource {
    async fn poll(&mut self, max: usize) -> Result<Option<Vec<SourceRecord>>, ConnectorError> {
        if !self.rules_synced {
            self.api.sync_rules().await?;
            self.rules_synced = true;
        }
        if self.buffered.is_empty() {
            self.read().await?;
        }
        let take = max.min(self.buffered.len());
        Ok(Some(self.buffered.drain(..take).collect()))
    }
}

impl StreamSource {
    /// Reads the stream until it gives something (posts, bad lines) or a keep-alive; reconnects
    /// as X's rules say when the connection drops.
    async fn read(&mut self) -> Result<(), ConnectorError> {
        loop {
            if let Some(why) = self.dropped.take() {
                self.response = None;
                self.pending.clear();
                let wait = self.failures.wait(&why, &self.api.config.reconnect);
                let (Dropped::Network(reason)
                | Dropped::Http(reason)
                | Dropped::RateLimited(reason, _)) = &why;
                tracing::warn!(?wait, "the X stream dropped: {reason}; reconnecting");
                tokio::time::sleep(wait).await;
            }
            if self.response.is_none() {
                match self.connect().await? {
                    Ok(response) => self.response = Some(response),
                    Err(why) => {
                        self.dropped = Some(why);
                        continue;
                    }
                }
            }
            let Some(response) = self.response.as_mut() else {
                continue;
            };
            let stall = self.api.config.stall_timeout;
            match tokio::time::timeout(stall, response.chunk()).await {
                Err(_) => {
                    self.dropped = Some(Dropped::Network(format!(
                        "nothing, not even a keep-alive, for {stall:?} (`stall_timeout`)"
                    )))
                }
                Ok(Err(e)) => self.dropped = Some(Dropped::Network(format!("read failed: {e}"))),
                Ok(Ok(None)) => self.dropped = Some(Dropped::Network("the server ended it".into())),
                Ok(Ok(Some(chunk))) => {
                    self.pending.extend_from_slice(&chunk);
                    let dropped = self.take_lines();
                    if dropped.is_none() || !self.buffered.is_empty() {
                        // Something arrived (even a keep-alive): the connection worked.
                        self.failures = Failures::default();
                    }
                    self.dropped = dropped;
                    // Posts that came before a disconnect go out before the reconnect's wait.
                    if self.dropped.is_none() || !self.buffered.is_empty() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Opens the stream: the response, a failure to reconnect after, or a failure that ends
    /// the run (credentials refused, a request X will never accept).
    async fn connect(&self) -> Result<Result<reqwest::Response, Dropped>, ConnectorError> {
        let mut url = self.api.url("/2/tweets/search/stream")?;
        self.api.fields(&mut url);
        let shown = endpoint("GET", &url);
        let sent = self
            .streaming
            .get(url)
            .bearer_auth(self.api.config.bearer_token.expose())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                return Ok(Err(Dropped::Network(format!(
                    "{shown}: {}",
                    sluice_core::redact_url(&e.to_string())
                ))))
            }
        };
        let status = response.status();
        if status.is_success() {
            tracing::info!(endpoint = %shown, "connected to the X stream");
            return Ok(Ok(response));
        }
        let told = server_wait(response.headers(), SystemTime::now());
        let body = response.bytes().await.unwrap_or_default();
        let reason = format!("{shown} answered {status}: {}", excerpt(&body));
        match status {
            StatusCode::FORBIDDEN if allowance_spent(&body) => Err(ConnectorError::user(format!(
                "{reason}; X refused for the account's usage cap or credits, not for the token"
            ))),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(ConnectorError::user(format!(
                "{reason}; the credentials were refused: check `bearer_token` (an app-only bearer token of a project with filtered-stream access)"
            ))),
            StatusCode::TOO_MANY_REQUESTS => Ok(Err(Dropped::RateLimited(reason, told))),
            s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
                Ok(Err(Dropped::Http(reason)))
            }
            _ => Err(ConnectorError::external(reason)),
        }
    }

    /// Turns the complete lines received into records; a message that ends the connection
    /// (an operational disconnect) is returned.
    fn take_lines(&mut self) -> Option<Dropped> {
        let mut dropped = None;
        let mut start = 0;
        while let Some(end) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let line = self.pending[start..start + end].trim_ascii().to_vec();
            start += end + 1;
            if line.is_empty() {
                continue; // keep-alive
            }
            if let Some(why) = self.message(&line) {
                dropped = Some(why);
                break;
            }
        }
        self.pending.drain(..start);
        dropped
    }

    /// One line of the stream: a post, a disconnect, or something skipped.
    fn message(&mut self, line: &[u8]) -> Option<Dropped> {
        let last_id = self.last_id.clone();
        let offset = || json!({ "last_id": last_id });
        let message: Value = match serde_json::from_slice(line) {
            Ok(message) => message,
            Err(e) => {
                let bad = self.api.bad(
                    STREAM_PARTITION,
                    offset(),
                    format!("a stream line is not JSON ({e}): {}", excerpt(line)),
                    line.to_vec(),
                );
                self.buffered.push_back(bad);
                return None;
            }
        };
        if let Some(data) = message.get("data") {
            let Some(record) =
                self.api
                    .record(data, &message["includes"], message.get("matching_rules"))
            else {
                let bad = self.api.bad(
                    STREAM_PARTITION,
                    offset(),
                    format!("`data` is not a post with an id: {}", excerpt(line)),
                    line.to_vec(),
                );
                self.buffered.push_back(bad);
                return None;
            };
            let id = record.key_str().unwrap_or_default().to_string();
            if !self.recent.insert(&id) {
                tracing::debug!(%id, "a post the stream sent before; skipped");
                return None;
            }
            self.last_id = Some(id.clone());
            self.buffered.push_back(SourceRecord {
                partition: STREAM_PARTITION.into(),
                offset: json!({ "last_id": id }),
                position: None,
                payload: Payload::Record(record),
            });
            return None;
        }
        // Errors come as `{"errors": [..]}` or, for connection problems, as one object.
        let problems: Vec<&Value> = match message.get("errors") {
            Some(Value::Array(errors)) => errors.iter().collect(),
            _ if message.get("title").is_some() => vec![&message],
            _ => {
                tracing::debug!(message = %excerpt(line), "an unknown message on the X stream; skipped");
                return None;
            }
        };
        for problem in problems {
            let title = problem["title"].as_str().unwrap_or_default();
            let detail = problem["detail"].as_str().unwrap_or_default();
            let reason = format!("{title}: {detail}");
            if title == "ConnectionException" {
                return Some(Dropped::RateLimited(reason, None));
            }
            if title == "operational-disconnect" || problem.get("disconnect_type").is_some() {
                return Some(Dropped::Network(reason));
            }
            tracing::warn!("the X stream reports a problem: {reason}");
        }
        None
    }
}

/// Where recent search is: the scan under way, from the newest post down.
#[derive(Debug, Clone, Default, PartialEq)]
struct Scan {
    /// Posts newer than this one are asked for (the newest of the last complete scan).
    since_id: Option<String>,
    /// The newest post of the scan under way: `since_id` once it is read to its end.
    newest_id: Option<String>,
    /// `next_token` of the page to ask for next; `None`: the scan's first page.
    page: Option<String>,
    /// Posts at or above this id on `page` were delivered (a restart within a page).
    last_id: Option<u64>,
    /// A scan is under way (its first page was read).
    under_way: bool,
}

impl Scan {
    fn from_offset(offset: Option<&Value>) -> Scan {
        let text = |k: &str| {
            offset
                .and_then(|o| o.get(k))
                .and_then(Value::as_str)
                .map(String::from)
        };
        let newest_id = text("newest_id");
        Scan {
            since_id: text("since_id"),
            under_way: newest_id.is_some(),
            newest_id,
            page: text("page"),
            last_id: text("last_id").and_then(|id| id.parse().ok()),
        }
    }

    /// The offset after delivering post `id` (none yet: `None`) of the page asked for with
    /// `page`.
    fn offset_within(&self, page: &Option<String>, id: Option<&str>) -> Value {
        json!({
            "since_id": self.since_id,
            "newest_id": self.newest_id,
            "page": page,
            "last_id": id,
        })
    }

    /// The offset once the scan is read to its end.
    fn offset_done(since_id: &Option<String>) -> Value {
        json!({ "since_id": since_id })
    }
}

struct SearchSource {
    api: Api,
    scan: Scan,
    due: Option<tokio::time::Instant>,
    recent: Recent,
    buffered: VecDeque<SourceRecord>,
}

#[async_trait]
impl Source for SearchSource {
    async fn poll(&mut self, max: usize) -> Result<Option<Vec<SourceRecord>>, ConnectorError> {
        if self.buffered.is_empty() {
            if !self.scan.under_way {
                if let Some(due) = self.due {
                    tokio::time::sleep_until(due).await;
                }
                self.due = Some(tokio::time::Instant::now() + self.api.config.interval);
            }
            self.read_page().await?;
        }
        let take = max.min(self.buffered.len());
        Ok(Some(self.buffered.drain(..take).collect()))
    }
}

impl SearchSource {
    async fn read_page(&mut self) -> Result<(), ConnectorError> {
        let config = &self.api.config;
        let mut url = self.api.url("/2/tweets/search/recent")?;
        url.query_pairs_mut()
            .append_pair("query", &config.search_query())
            .append_pair("max_results", &config.max_results.to_string());
        self.api.fields(&mut url);
        if let Some(since) = &self.scan.since_id {
            url.query_pairs_mut().append_pair("since_id", since);
        }
        let page = self.scan.page.clone();
        if let Some(token) = &page {
            url.query_pairs_mut().append_pair("next_token", token);
        }
        let answer = self.api.call(url, None).await?;
        let meta = &answer["meta"];
        if !self.scan.under_way {
            self.scan.under_way = true;
            self.scan.newest_id = meta["newest_id"].as_str().map(String::from);
        }
        let posts = match answer.get("data") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(posts)) => posts.as_slice(),
            Some(_) => {
                let raw = answer.to_string().into_bytes();
                let bad = self.api.bad(
                    SEARCH_PARTITION,
                    Scan::offset_done(&self.scan.since_id),
                    format!("`data` is not a list of posts: {}", excerpt(&raw)),
                    raw,
                );
                self.buffered.push_back(bad);
                &[][..]
            }
        };
        let delivered_through = self.scan.last_id.take();
        // The last post delivered from this page: where a bad item leaves the offset.
        let mut last_delivered: Option<&str> = None;
        for post in posts {
            let Some(record) = self.api.record(post, &answer["includes"], None) else {
                let raw = post.to_string().into_bytes();
                let bad = self.api.bad(
                    SEARCH_PARTITION,
                    self.scan.offset_within(&page, last_delivered),
                    format!("a post without an id: {}", excerpt(&raw)),
                    raw,
                );
                self.buffered.push_back(bad);
                continue;
            };
            let id = post["id"].as_str().unwrap_or_default();
            let number: Option<u64> = id.parse().ok();
            let delivered =
                matches!((number, delivered_through), (Some(n), Some(through)) if n >= through);
            if delivered || !self.recent.insert(id) {
                continue;
            }
            last_delivered = Some(id);
            self.buffered.push_back(SourceRecord {
                partition: SEARCH_PARTITION.into(),
                offset: self.scan.offset_within(&page, Some(id)),
                position: None,
                payload: Payload::Record(record),
            });
        }
        match meta["next_token"].as_str() {
            Some(next) => self.scan.page = Some(next.to_string()),
            None => {
                // The scan is read to its end: the next one asks for what is newer than it.
                if self.scan.newest_id.is_some() {
                    self.scan.since_id = self.scan.newest_id.take();
                }
                self.scan.page = None;
                self.scan.under_way = false;
                let done = Scan::offset_done(&self.scan.since_id);
                if let Some(last) = self.buffered.back_mut() {
                    last.offset = done;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule or query longer than X takes is refused by `validate`, naming the field; a
    /// higher access level raises `query_limit`.
    #[test]
    fn rules_and_queries_longer_than_x_takes_are_refused_by_validate() {
        let long = format!("({})", vec!["macron"; 90].join(" OR "));
        let config = |yaml: String| -> TwitterSourceConfig { serde_yaml::from_str(&yaml).unwrap() };
        let stream = config(format!("bearer_token: t\nrules: [{{ value: '{long}' }}]"));
        let errors = stream.validate().unwrap_err();
        assert_eq!(errors[0].field, "rules[0].value", "{errors:?}");
        assert!(errors[0].message.contains("512"), "{errors:?}");
        let search = config(format!(
            "bearer_token: t\nmode: recent_search\nquery: '{long}'"
        ));
        assert_eq!(search.validate().unwrap_err()[0].field, "query");
        let pro = config(format!(
            "bearer_token: t\nquery_limit: 1024\nrules: [{{ value: '{long}' }}]"
        ));
        assert!(pro.validate().is_ok());
    }

    #[test]
    fn reconnect_waits_follow_x_rules_and_reset_after_data() {
        let rules = Reconnect::default();
        let mut failures = Failures::default();
        let network = Dropped::Network("reset".into());
        let waits: Vec<u128> = (0..70)
            .map(|_| failures.wait(&network, &rules).as_millis())
            .collect();
        assert_eq!(&waits[..4], [250, 500, 750, 1000]);
        assert_eq!(waits[63], 16_000);
        assert_eq!(waits[69], 16_000);
        let mut failures = Failures::default();
        let http = Dropped::Http("503".into());
        let waits: Vec<u64> = (0..8)
            .map(|_| failures.wait(&http, &rules).as_secs())
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 320]);
        let mut failures = Failures::default();
        let limited = Dropped::RateLimited("429".into(), None);
        let waits: Vec<u64> = (0..3)
            .map(|_| failures.wait(&limited, &rules).as_secs())
            .collect();
        assert_eq!(waits, [60, 120, 240]);
        // The server's reset time counts when it is later than the backoff.
        let told = Dropped::RateLimited("429".into(), Some(Duration::from_secs(600)));
        assert_eq!(Failures::default().wait(&told, &rules).as_secs(), 600);
    }

    fn stream_source() -> StreamSource {
        let config: TwitterSourceConfig = serde_json::from_value(json!({
            "bearer_token": "t",
            "rules": [{ "value": "bitcoin", "tag": "btc" }],
            "user_fields": ["username", "name"],
        }))
        .unwrap();
        StreamSource {
            api: Api {
                client: HttpClient::new(HttpSettings::default(), "").unwrap(),
                config: Arc::new(config),
            },
            rules_synced: true,
            streaming: reqwest::Client::new(),
            response: None,
            pending: Vec::new(),
            failures: Failures::default(),
            recent: Recent::default(),
            last_id: None,
            dropped: None,
            buffered: VecDeque::new(),
        }
    }

    /// Lines split across chunks, keep-alives, a duplicate, an unknown message and a line that
    /// is not JSON: posts once each with their author and tags, the bad line kept as one.
    #[test]
    fn stream_lines_become_posts_once_each_and_a_disconnect_ends_the_read() {
        let mut source = stream_source();
        let fixture = include_str!("../../../tests/fixtures/api/twitter-v2-filtered-stream.ndjson");
        source.pending.extend_from_slice(
            b"{\"data\":{\"id\":\"1620041380532740100\",\"text\":\"first\"}}\r\n\r\n{\"hello\":1}\r\nnot json\r\n",
        );
        assert!(source.take_lines().is_none());
        // The fixture, its second post split across two chunks; its first post is a duplicate.
        let (first, rest) = fixture.split_at(fixture.len() / 3);
        source.pending.extend_from_slice(first.as_bytes());
        assert!(source.take_lines().is_none());
        source.pending.extend_from_slice(rest.as_bytes());
        let dropped = source.take_lines();
        assert!(
            matches!(&dropped, Some(Dropped::Network(r)) if r.starts_with("operational-disconnect")),
            "{dropped:?}"
        );
        let records: Vec<&SourceRecord> = source.buffered.iter().collect();
        let posts: Vec<&Record> = records
            .iter()
            .filter_map(|r| match &r.payload {
                Payload::Record(record) => Some(record),
                _ => None,
            })
            .collect();
        let ids: Vec<&str> = posts.iter().filter_map(|p| p.key_str()).collect();
        assert_eq!(
            ids,
            (0..5)
                .map(|i| format!("162004138053274010{i}"))
                .collect::<Vec<_>>()
        );
        assert_eq!(posts[1].value["author_username"], "sample_user_1");
        assert_eq!(posts[1].value["author_name"], "Sample User 1");
        assert_eq!(posts[1].value["matching_tags"], json!(["candidates"]));
        assert_eq!(posts[1].timestamp, Some(1_675_278_031_000));
        let bad: Vec<&SourceRecord> = records
            .iter()
            .copied()
            .filter(|r| matches!(r.payload, Payload::Bad(_)))
            .collect();
        assert_eq!(bad.len(), 1);
    }

    /// X's connection problem objects: too many connections waits like a 429.
    #[test]
    fn a_connection_exception_is_waited_out_like_a_429() {
        let mut source = stream_source();
        source.pending.extend_from_slice(
            b"{\"title\":\"ConnectionException\",\"detail\":\"This stream is currently at the maximum allowed connection limit.\",\"connection_issue\":\"TooManyConnections\",\"type\":\"https://api.twitter.com/2/problems/streaming-connection\"}\r\n",
        );
        let dropped = source.take_lines();
        assert!(
            matches!(&dropped, Some(Dropped::RateLimited(r, None)) if r.starts_with("ConnectionException")),
            "{dropped:?}"
        );
        assert!(source.buffered.is_empty());
    }

    #[test]
    fn a_search_offset_within_a_scan_resumes_at_its_page() {
        let scan = Scan {
            since_id: Some("100".into()),
            newest_id: Some("200".into()),
            page: None,
            last_id: None,
            under_way: true,
        };
        let offset = scan.offset_within(&Some("tok".into()), Some("150"));
        let resumed = Scan::from_offset(Some(&offset));
        assert_eq!(
            resumed,
            Scan {
                since_id: Some("100".into()),
                newest_id: Some("200".into()),
                page: Some("tok".into()),
                last_id: Some(150),
                under_way: true,
            }
        );
        let done = Scan::from_offset(Some(&Scan::offset_done(&Some("200".into()))));
        assert_eq!(done.since_id.as_deref(), Some("200"));
        assert!(!done.under_way);
    }
}
