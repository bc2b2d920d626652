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
use crate::shared::{time_millis, Recent};
use reqwest::StatusCode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sluice_api::{
    async_trait, BadInput, ConnectorError, FieldError, Payload, Record, Secret, Source,
    SourceBuildContext, SourceConfig, SourceRecord,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod api;
mod search;
mod stream;

use api::Api;
use search::{Scan, SearchSource};
use stream::{Failures, StreamSource};

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
    /// What the stream does about posts made while it was not connected (a reconnect, a
    /// restart): `none` (the default: the filtered stream cannot replay them, they are lost)
    /// or `recent_search`: once connected again, read them through recent search (`since_id`
    /// = the last post delivered, within X's 7 days; the query is the `rules` joined with
    /// `OR`), oldest first, then go on with the stream, each post once. Costs recent-search
    /// reads; backfilled posts have no `matching_tags` (search does not say which rule
    /// matched). `mode: recent_search` needs none: it reads from where it stopped.
    #[serde(default)]
    pub backfill: Backfill,
    /// Most posts one backfill reads (the newest; older ones are reported as not read).
    #[serde(default = "default_backfill_limit")]
    pub backfill_limit: usize,
    /// Where the API is (a proxy, a test server).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Timeouts, retries, backoff and request budget of the rules and search requests.
    #[serde(default)]
    pub http: HttpSettings,
}

/// How the stream makes up for the posts it missed while not connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backfill {
    /// Posts made while the stream was not connected are lost.
    #[default]
    None,
    /// They are read through recent search once the stream is connected again.
    RecentSearch,
}

fn default_backfill_limit() -> usize {
    10_000
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

#[sluice_api::source("twitter")]
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
        if self.backfill_limit == 0 {
            errors.push(FieldError::new("backfill_limit", "must be at least 1"));
        }
        FieldError::all(errors)
    }

    async fn build(&self, ctx: SourceBuildContext) -> Result<Box<dyn Source>, ConnectorError> {
        // Checked here, not in `validate`: a pipeline file validates without its secrets set.
        if self.bearer_token.expose().trim().is_empty() {
            return Err(ConnectorError::user("`bearer_token` is empty").with_field("bearer_token"));
        }
        let api = Api {
            client: HttpClient::new(self.http.clone(), "`bearer_token` (the app's bearer token)")?
                .reporting_to(ctx.status.clone()),
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
                // A restart left a gap as a reconnect does.
                let backfill_due = self.backfill == Backfill::RecentSearch && last_id.is_some();
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
                    backfill_due,
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
}
