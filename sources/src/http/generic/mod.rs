//! `type: http` — polls a JSON API, follows its pagination, and keeps its place across restarts.
//!
//! **Offset** (one source partition, the source's `url` as written): `{first, url, after, next,
//! last_id, fields, delivered}` — the request of the page the last delivered record came from
//! (and the first page of its request), how many of that page's records were delivered, the
//! next page's request (if the page had one), that record's id, the `cursor` fields taken from
//! it, and how many records were delivered in all (the position for `exactly_once`). A restart asks for that page again and
//! skips what was delivered: through the record with `last_id` when `id` is set and it is still
//! there, else the first `after`; then goes on to `next`. With `exactly_once` the offset also
//! holds the `plan` of the page being sent (see [`Plan`]), stored before any of it is sent: a
//! restart numbers the page by it, and skips what is below the next position.
//!
//! **Polls**: pages are followed one after another; after the last one the source waits
//! `interval` and asks for the last page again (new records on it are picked up), or, when the
//! request uses `{offset.NAME}` and a cursor field moved, for the first page of the new request.
//! With `id`, a record whose id was delivered before (the last one stored, or any of the last
//! 100,000 of this run) is skipped and counted: an inclusive `since` bound repeats its boundary
//! record without duplicating it.
//!
//! **Records**: each element of the array at `records` (a JSON pointer; the body itself when
//! empty; an object there is one record); key = the value at `key`, else at `id`; time = the
//! value at `time` (RFC 3339, or epoch seconds/milliseconds), else the time of reading. A page
//! that is not JSON, or has no array or object at `records`, is a bad record (dead-letter topic
//! with an excerpt of the body, or fatal per `errors.tolerance`).

use super::client::{endpoint, excerpt, shown, HttpClient, HttpSettings};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_api::{
    async_trait, record::now_millis, BadInput, ConnectorError, FieldError, Payload, Record, Secret,
    Source, SourceBuildContext, SourceConfig, SourceRecord,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Polls a JSON HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// URL to request. `{offset.NAME}` is replaced by the `cursor` field NAME (URL-encoded).
    pub url: String,
    /// `GET` or `POST`.
    #[serde(default)]
    pub method: Method,
    /// Request headers.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub headers: IndexMap<String, String>,
    /// Query parameters, added to those of `url`; values may use `{offset.NAME}`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub query: IndexMap<String, String>,
    /// JSON body (with `POST`); string values may use `{offset.NAME}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Credentials: `{ bearer: TOKEN }`, `{ basic: { username, password } }`, or
    /// `{ api_key: { header: NAME, value: KEY } }`. Never logged or stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// Wait between polls once the last page is read.
    #[serde(default = "default_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// JSON pointer to the records in a page (`/data`); empty for the body itself.
    #[serde(default)]
    pub records: String,
    /// How to get from a page to the next; unset: one page per poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagination: Option<Pagination>,
    /// JSON pointer to a record's id (`/id`): records are de-duplicated by it, and a restart
    /// finds its place by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// JSON pointer to the value that becomes the record key; default: `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// JSON pointer to the record time (RFC 3339 text, or epoch seconds or milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Fields kept in the source offset from the last delivered record, usable in `url`,
    /// `query` and `body` as `{offset.NAME}`: NAME → `{ field: POINTER, initial: VALUE }`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub cursor: IndexMap<String, CursorField>,
    /// Finish once the last page is read, instead of polling every `interval`: a one-off
    /// backfill (the run ends when every source has finished and the sinks caught up).
    #[serde(default)]
    pub stop_after_last_page: bool,
    /// Timeouts, retries, backoff and the request budget.
    #[serde(default)]
    pub http: HttpSettings,
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}

/// HTTP method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Get,
    Post,
}

/// Credentials of a request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// `Authorization: Bearer TOKEN`.
    Bearer(Secret),
    /// `Authorization: Basic …`.
    Basic { username: String, password: Secret },
    /// A header carrying an API key, e.g. `X-Messari-API-Key`.
    ApiKey { header: String, value: Secret },
}

impl Auth {
    pub fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::Bearer(token) => request.bearer_auth(token.expose()),
            Auth::Basic { username, password } => {
                request.basic_auth(username, Some(password.expose()))
            }
            Auth::ApiKey { header, value } => request.header(header.as_str(), value.expose()),
        }
    }
}

/// From one page to the next.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// A token in the page (JSON pointer `field`) sent back as query parameter `param`; no
    /// token (missing, null or empty) means the last page.
    NextToken { field: String, param: String },
    /// The URL in the `Link: <…>; rel="next"` header.
    LinkHeader,
    /// Page numbers in query parameter `param`, from `start`; an empty page is past the end.
    Page {
        param: String,
        #[serde(default = "one")]
        start: u64,
    },
    /// Record offsets in query parameter `param`, from `start`, advanced by each page's
    /// record count; an empty page is past the end.
    Offset {
        param: String,
        #[serde(default)]
        start: u64,
    },
}

fn one() -> u64 {
    1
}

/// A field of the source offset taken from the last delivered record.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CursorField {
    /// JSON pointer into the record.
    pub field: String,
    /// Value before any record was delivered.
    #[serde(default)]
    pub initial: String,
}

#[sluice_api::source("http")]
impl SourceConfig for HttpSourceConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Err(e) = reqwest::Url::parse(&fill(&self.url, &self.initial_cursor(), false)) {
            errors.push(FieldError::new("url", format!("not a URL: {e}")));
        }
        let pointers = [
            ("records", Some(&self.records)),
            ("id", self.id.as_ref()),
            ("key", self.key.as_ref()),
            ("time", self.time.as_ref()),
        ];
        for (field, pointer) in pointers {
            if let Some(p) = pointer.filter(|p| !p.is_empty() && !p.starts_with('/')) {
                errors.push(FieldError::new(
                    field,
                    format!("`{p}` is not a JSON pointer (they start with `/`, e.g. `/data`)"),
                ));
            }
        }
        for (name, field) in &self.cursor {
            if !field.field.starts_with('/') {
                errors.push(FieldError::new(
                    format!("cursor.{name}.field"),
                    "must be a JSON pointer (e.g. `/updated_at`)",
                ));
            }
        }
        for text in self.templates() {
            for name in placeholders(text) {
                if !self.cursor.contains_key(name) {
                    errors.push(FieldError::new(
                        "cursor",
                        format!("`{{offset.{name}}}` is used but `cursor` has no field `{name}`"),
                    ));
                }
            }
        }
        if self.body.is_some() && self.method == Method::Get {
            errors.push(FieldError::new("body", "needs `method: POST`"));
        }
        if self.interval.is_zero() {
            errors.push(FieldError::new("interval", "must be longer than 0"));
        }
        FieldError::all(errors)
    }

    async fn build(&self, ctx: SourceBuildContext) -> Result<Box<dyn Source>, ConnectorError> {
        let client = HttpClient::new(self.http.clone(), "`auth` and the API's access rules")?
            .reporting_to(ctx.status.clone());
        let partition: Arc<str> = self.url.as_str().into();
        let stored = ctx
            .offsets
            .get(&*partition)
            .map(|v| serde_json::from_value::<Cursor>(v.clone()))
            .transpose()
            .map_err(|e| {
                ConnectorError::user(format!(
                    "the stored offset of `{}` is not this source's: {e}",
                    self.url
                ))
            })?;
        let cursor = stored.unwrap_or_else(|| Cursor {
            fields: self.initial_cursor(),
            ..Cursor::default()
        });
        Ok(Box::new(HttpSource {
            config: Arc::new(self.clone()),
            exactly_once: ctx.exactly_once,
            prefetched: None,
            read_last_page: false,
            client,
            partition,
            chain: cursor.first.clone().unwrap_or_default(),
            cursor,
            next: None,
            due: None,
            buffered: VecDeque::new(),
            page_ref: None,
            recent: crate::shared::Recent::default(),
        }))
    }
}

impl HttpSourceConfig {
    fn initial_cursor(&self) -> IndexMap<String, String> {
        self.cursor
            .iter()
            .map(|(name, f)| (name.clone(), f.initial.clone()))
            .collect()
    }

    /// Every text that may hold `{offset.NAME}`.
    fn templates(&self) -> Vec<&str> {
        let mut texts = vec![self.url.as_str()];
        texts.extend(self.query.values().map(String::as_str));
        if let Some(body) = &self.body {
            collect_strings(body, &mut texts);
        }
        texts
    }

    /// The first page's URL for the cursor fields `fields`.
    fn first_page(&self, fields: &IndexMap<String, String>) -> Result<String, ConnectorError> {
        let mut url = reqwest::Url::parse(&fill(&self.url, fields, true)).map_err(|e| {
            ConnectorError::user(format!("`url` is not a URL: {e}")).with_field("url")
        })?;
        if !self.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in &self.query {
                pairs.append_pair(name, &fill(value, fields, false));
            }
        }
        match &self.pagination {
            Some(Pagination::Page { param, start }) | Some(Pagination::Offset { param, start }) => {
                Ok(with_param(&url, param, &start.to_string()))
            }
            _ => Ok(url.to_string()),
        }
    }
}

mod cursor;
mod source;
mod template;
#[cfg(test)]
mod tests;

use cursor::*;
use source::*;
use template::*;
