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

fn collect_strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// Names used as `{offset.NAME}` in `text`.
fn placeholders(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("{offset.") {
        rest = &rest[at + "{offset.".len()..];
        match rest.find('}') {
            Some(end) => {
                names.push(&rest[..end]);
                rest = &rest[end..];
            }
            None => break,
        }
    }
    names
}

/// `text` with each `{offset.NAME}` replaced by the field's value (URL-encoded if `encode`).
fn fill(text: &str, fields: &IndexMap<String, String>, encode: bool) -> String {
    let mut out = text.to_string();
    for (name, value) in fields {
        let value = if encode {
            url_encode(value)
        } else {
            value.clone()
        };
        out = out.replace(&format!("{{offset.{name}}}"), &value);
    }
    out
}

fn url_encode(text: &str) -> String {
    reqwest::Url::parse_with_params("http://x/", [("v", text)])
        .ok()
        .and_then(|u| u.query().map(|q| q.trim_start_matches("v=").to_string()))
        .unwrap_or_else(|| text.to_string())
}

/// `url` with query parameter `param` set to `value`.
fn with_param(url: &reqwest::Url, param: &str, value: &str) -> String {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != param)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut url = url.clone();
    url.set_query(None);
    {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in &kept {
            pairs.append_pair(k, v);
        }
        pairs.append_pair(param, value);
    }
    url.to_string()
}

/// Where the source is: the source offset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Cursor {
    /// The first page of the request (its query filled from the cursor fields of then) that
    /// the last delivered record's page belongs to.
    #[serde(default)]
    first: Option<String>,
    /// The page the last delivered record came from.
    #[serde(default)]
    url: Option<String>,
    /// How many of its records were delivered.
    #[serde(default)]
    after: usize,
    /// That page's next page, if it had one.
    #[serde(default)]
    next: Option<String>,
    /// The id of the last delivered record.
    #[serde(default)]
    last_id: Option<Value>,
    /// `cursor` fields from the last delivered record.
    #[serde(default)]
    fields: IndexMap<String, String>,
    /// Records delivered since the first run: the next one's position for `exactly_once`
    /// (a resumed run numbers what it sends again as the first run did).
    #[serde(default)]
    delivered: u64,
    /// With `exactly_once`: how the page being sent is numbered, stored before any of it is
    /// sent, so that a restart numbers it alike even if the page changed meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plan: Option<Arc<Plan>>,
}

/// How the records of one page are numbered for `exactly_once`: each record on the page by its
/// fingerprint (its id, else a hash of its JSON text) and position. Asked for again, the
/// page's records are matched to the plan by fingerprint (the k-th of a fingerprint to its
/// k-th entry); records the plan does not hold get the next positions, after a store of the
/// plan so extended, so that positions only grow in the order records are sent. The plan
/// holds the records on the page when it was last read, so a page that slides (the latest N
/// records of a feed) keeps a plan of its own size; a record that left the page and comes
/// back later is numbered anew (sent again).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Plan {
    /// The page's request.
    url: String,
    /// Each record's fingerprint and position, in the page's order.
    entries: Vec<(String, u64)>,
    /// The position the next new record gets: above every position given so far.
    end: u64,
}

impl Cursor {
    /// The cursor as a source offset.
    fn to_offset(&self) -> Value {
        let page = PageRef {
            first: self.first.clone(),
            url: self.url.clone(),
            next: self.next.clone(),
            plan: self.plan.clone(),
        };
        self.mark(Arc::new(page)).to_offset()
    }

    /// The cursor as it is now, its page parts as `page`.
    fn mark(&self, page: Arc<PageRef>) -> Mark {
        Mark {
            page,
            after: self.after,
            last_id: self.last_id.clone(),
            fields: self.fields.clone(),
            delivered: self.delivered,
        }
    }
}

/// The parts of the cursor that stay the same through a page.
#[derive(Debug, PartialEq)]
struct PageRef {
    first: Option<String>,
    url: Option<String>,
    next: Option<String>,
    plan: Option<Arc<Plan>>,
}

/// The cursor after one buffered item. Its source offset is built only for the last item of
/// a polled batch: the runtime stores no other (see `SourceRecord::offset`), and building one
/// for every record cost a tenth of the source's time.
struct Mark {
    page: Arc<PageRef>,
    after: usize,
    last_id: Option<Value>,
    fields: IndexMap<String, String>,
    delivered: u64,
}

impl Mark {
    fn to_offset(&self) -> Value {
        let text =
            |t: &Option<String>| t.as_ref().map_or(Value::Null, |t| Value::String(t.clone()));
        let mut offset = Map::with_capacity(7);
        offset.insert("first".into(), text(&self.page.first));
        offset.insert("url".into(), text(&self.page.url));
        offset.insert("after".into(), Value::from(self.after));
        offset.insert("next".into(), text(&self.page.next));
        offset.insert(
            "last_id".into(),
            self.last_id.clone().unwrap_or(Value::Null),
        );
        if !self.fields.is_empty() {
            let fields = self
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            offset.insert("fields".into(), Value::Object(fields));
        }
        offset.insert("delivered".into(), Value::from(self.delivered));
        if let Some(plan) = &self.page.plan {
            offset.insert(
                "plan".into(),
                serde_json::to_value(&**plan).unwrap_or(Value::Null),
            );
        }
        Value::Object(offset)
    }
}

struct HttpSource {
    config: Arc<HttpSourceConfig>,
    /// Records are numbered for `exactly_once`: pages are planned (see [`Plan`]).
    exactly_once: bool,
    client: HttpClient,
    partition: Arc<str>,
    cursor: Cursor,
    /// The page to ask for next, when the last one had a next page.
    next: Option<String>,
    /// The first page of the request being read.
    chain: String,
    /// When the next poll is due (after the last page).
    due: Option<tokio::time::Instant>,
    /// Items to deliver; those with a mark get their offset from it when last of a batch.
    buffered: VecDeque<(SourceRecord, Option<Mark>)>,
    /// The page parts of the cursor, shared by the marks of its records.
    page_ref: Option<Arc<PageRef>>,
    recent: crate::shared::Recent,
    /// The next page, asked for while this one's records are sent.
    prefetched: Option<Prefetch>,
    /// A page without a next one was read (a page that was not a page does not count: it is
    /// asked for again after `interval`).
    read_last_page: bool,
}

/// One page, read.
struct Page {
    records: Vec<Value>,
    next: Option<String>,
}

#[async_trait]
impl Source for HttpSource {
    async fn poll(&mut self, max: usize) -> Result<Option<Vec<SourceRecord>>, ConnectorError> {
        while self.buffered.is_empty() {
            if let Some(due) = self.due {
                if self.config.stop_after_last_page && self.read_last_page {
                    return Ok(None);
                }
                tokio::time::sleep_until(due).await;
                self.due = None;
            }
            self.read_page().await?;
        }
        // A checkpoint ends its batch: what follows is sent once it is stored.
        let take = max.min(self.buffered.len());
        let take = self
            .buffered
            .iter()
            .take(take)
            .position(|(item, _)| matches!(item.payload, Payload::Checkpoint))
            .map_or(take, |at| at + 1);
        let mut batch = Vec::with_capacity(take);
        let mut last_mark = None;
        for (item, mark) in self.buffered.drain(..take) {
            batch.push(item);
            last_mark = mark;
        }
        // One source partition: the batch's last item carries the offset the runtime stores.
        if let (Some(last), Some(mark)) = (batch.last_mut(), last_mark) {
            last.offset = mark.to_offset();
        }
        Ok(Some(batch))
    }
}

impl HttpSource {
    /// Asks for the next page and buffers its new records (or a bad record).
    async fn read_page(&mut self) -> Result<(), ConnectorError> {
        let (url, skip_through) = match self.next.take() {
            Some(next) => (next, Skip::None),
            None => self.page_to_ask_again()?,
        };
        let body = self.page(&url).await?;
        let page = match self.parse(&body.0, &body.1) {
            Ok(page) => page,
            Err(message) => {
                let bad = SourceRecord {
                    partition: self.partition.clone(),
                    offset: self.cursor.to_offset(),
                    position: None,
                    payload: Payload::Bad(BadInput {
                        raw: body.1,
                        message,
                        location: url_without_query(&url),
                        ..BadInput::default()
                    }),
                };
                self.buffered.push_back((bad, None));
                self.due = Some(tokio::time::Instant::now() + self.config.interval);
                return Ok(());
            }
        };
        let skip = match skip_through {
            Skip::None => 0,
            Skip::First(n) => n,
            Skip::Through { id, or_first } => self
                .config
                .id
                .as_deref()
                .and_then(|p| page.records.iter().position(|r| r.pointer(p) == Some(&id)))
                .map_or(or_first, |at| at + 1),
        };
        let count = page.records.len();
        // The record time of records without `time`: read once per page.
        let now = now_millis();
        let next = match &self.config.pagination {
            Some(Pagination::Page { param, .. }) => step(&url, param, 1).filter(|_| count > 0),
            Some(Pagination::Offset { param, .. }) => {
                step(&url, param, count as u64).filter(|_| count > 0)
            }
            _ => page.next,
        };
        if self.exactly_once {
            self.emit_planned(&url, page.records, skip, &next, now);
        } else {
            for (i, value) in page.records.into_iter().enumerate() {
                if i < skip {
                    continue;
                }
                let position = self.cursor.delivered;
                self.emit(&url, i, value, &next, now, position);
            }
        }
        match &next {
            Some(next) if count > 0 => {
                self.prefetch(next);
                self.next = Some(next.clone());
            }
            _ => {
                // The last page (or past it): wait, then ask for the last page again.
                self.read_last_page = true;
                self.due = Some(tokio::time::Instant::now() + self.config.interval);
            }
        }
        Ok(())
    }

    /// After the last page or on a restart: the cursor's page again (skipping what was
    /// delivered), or the first page of the request when a cursor field it uses moved.
    fn page_to_ask_again(&mut self) -> Result<(String, Skip), ConnectorError> {
        let first = self.config.first_page(&self.cursor.fields)?;
        // A restart after the plan of the page after the cursor's was stored: every record
        // of the cursor's page was delivered, and that page is read next, as planned.
        if let Some(plan) = &self.cursor.plan {
            if self.chain == first
                && self.cursor.next.as_deref() == Some(plan.url.as_str())
                && self.cursor.url.as_deref() != Some(plan.url.as_str())
            {
                return Ok((plan.url.clone(), Skip::None));
            }
        }
        let Some(url) = self.cursor.url.clone().filter(|_| self.chain == first) else {
            // A first run, or a new request: its boundary record (an inclusive bound) is
            // skipped by id.
            self.chain = first.clone();
            let skip = match &self.cursor.last_id {
                Some(id) => Skip::Through {
                    id: id.clone(),
                    or_first: 0,
                },
                None => Skip::None,
            };
            return Ok((first, skip));
        };
        let delivered = match &self.cursor.last_id {
            Some(id) => Skip::Through {
                id: id.clone(),
                or_first: self.cursor.after,
            },
            None => Skip::First(self.cursor.after),
        };
        Ok((url, delivered))
    }

    /// Starts asking for page `url` on a task of its own, so that it arrives while this
    /// page's records are being sent.
    fn prefetch(&mut self, url: &str) {
        let fetching = fetch(
            self.client.clone(),
            self.config.clone(),
            self.cursor.fields.clone(),
            url.to_string(),
        );
        self.prefetched = Some(Prefetch {
            url: url.to_string(),
            task: tokio::spawn(fetching),
        });
    }

    /// Page `url`: the one fetched ahead if it is that one, else asked for now.
    async fn page(&mut self, url: &str) -> Result<Answer, ConnectorError> {
        if let Some(mut ahead) = self.prefetched.take() {
            if ahead.url == url {
                return (&mut ahead.task).await.map_err(|e| {
                    ConnectorError::internal(format!("the page request's task ended: {e}"))
                })?;
            }
        }
        fetch(
            self.client.clone(),
            self.config.clone(),
            self.cursor.fields.clone(),
            url.to_string(),
        )
        .await
    }

    /// The records of a page and its next page, or why the body is not a page.
    fn parse(&self, headers: &reqwest::header::HeaderMap, body: &[u8]) -> Result<Page, String> {
        let mut document: Value = serde_json::from_slice(body)
            .map_err(|e| format!("the response is not JSON ({e}): {}", excerpt(body)))?;
        let next = match &self.config.pagination {
            None => None,
            Some(Pagination::NextToken { field, param }) => {
                let token = match document.pointer(field) {
                    Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
                let first = reqwest::Url::parse(&self.chain).map_err(|e| e.to_string())?;
                token.map(|t| with_param(&first, param, &t))
            }
            Some(Pagination::LinkHeader) => headers
                .get_all(reqwest::header::LINK)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(next_link),
            Some(Pagination::Page { .. }) | Some(Pagination::Offset { .. }) => None,
        };
        // The records are taken out of the document, not copied.
        let at = if self.config.records.is_empty() {
            Some(std::mem::take(&mut document))
        } else {
            document
                .pointer_mut(&self.config.records)
                .map(std::mem::take)
        };
        let records = match at {
            Some(Value::Array(items)) => items,
            Some(object @ Value::Object(_)) => vec![object],
            Some(Value::Null) | None if !self.config.records.is_empty() => {
                return Err(format!(
                    "no records at `{}` in the response: {}",
                    self.config.records,
                    excerpt(body)
                ))
            }
            _ => {
                return Err(format!(
                    "the records are neither an array nor an object: {}",
                    excerpt(body)
                ))
            }
        };
        Ok(Page { records, next })
    }

    /// Buffers the records of page `url` numbered by its plan (made now when the page has
    /// none, extended with records it lacks, and then stored ahead through a checkpoint), in
    /// the order of their positions, leaving out those sent already: positions below the
    /// cursor's next one, or, for a page the plan did not know, the first `skip` of it.
    fn emit_planned(
        &mut self,
        url: &str,
        records: Vec<Value>,
        skip: usize,
        next: &Option<String>,
        now: i64,
    ) {
        let known = self.cursor.plan.as_deref().filter(|plan| plan.url == url);
        let planned_before = known.is_some();
        // Positions to give, as the plan of this page says, else from above every position
        // given so far.
        let mut end = match known {
            Some(plan) => plan.end,
            None => self
                .cursor
                .delivered
                .max(self.cursor.plan.as_deref().map_or(0, |p| p.end)),
        };
        let mut places: std::collections::HashMap<&str, VecDeque<u64>> =
            std::collections::HashMap::new();
        for (print, position) in known.map(|p| p.entries.as_slice()).unwrap_or_default() {
            places
                .entry(print.as_str())
                .or_default()
                .push_back(*position);
        }
        let mut entries = Vec::with_capacity(records.len());
        let mut placed: Vec<(u64, usize)> = Vec::with_capacity(records.len());
        let mut added = false;
        for (i, value) in records.iter().enumerate() {
            let print = self.fingerprint(value);
            let position = match places.get_mut(print.as_str()).and_then(VecDeque::pop_front) {
                Some(position) => position,
                None => {
                    added = true;
                    end += 1;
                    end - 1
                }
            };
            placed.push((position, i));
            entries.push((print, position));
        }
        placed.sort_unstable();
        let plan = Plan {
            url: url.to_string(),
            entries,
            end,
        };
        if added {
            // Stored before any record it numbers anew is sent.
            self.cursor.plan = Some(Arc::new(plan));
            let checkpoint = SourceRecord {
                partition: self.partition.clone(),
                offset: Value::Null,
                position: None,
                payload: Payload::Checkpoint,
            };
            let mark = self.mark();
            self.buffered.push_back((checkpoint, Some(mark)));
        } else if planned_before && self.cursor.plan.as_deref() != Some(&plan) {
            // Records left the page: the plan shrinks with the next offset stored.
            self.cursor.plan = Some(Arc::new(plan));
        }
        let mut records: Vec<Option<Value>> = records.into_iter().map(Some).collect();
        for (position, i) in placed {
            let sent = if planned_before {
                position < self.cursor.delivered
            } else {
                i < skip
            };
            if sent {
                continue;
            }
            if let Some(value) = records.get_mut(i).and_then(Option::take) {
                self.emit(url, i, value, next, now, position);
            }
        }
    }

    /// What a record of a page is matched to its plan by: its id, else a hash of its JSON
    /// text (FNV-1a: the same on every run and build).
    fn fingerprint(&self, value: &Value) -> String {
        if let Some(id) = self.config.id.as_deref().and_then(|p| value.pointer(p)) {
            return format!("id:{}", id_text(id));
        }
        let hash = sluice_api::exactly_once::fnv1a(value.to_string().as_bytes());
        format!("{hash:016x}")
    }

    fn emit(
        &mut self,
        url: &str,
        index: usize,
        value: Value,
        next: &Option<String>,
        now: i64,
        position: u64,
    ) {
        let id = self
            .config
            .id
            .as_deref()
            .and_then(|p| value.pointer(p))
            .cloned();
        let id_as_text = id.as_ref().map(id_text);
        if let Some(text) = &id_as_text {
            if !self.recent.insert(text) {
                // Its place is taken: a restart does not send it either.
                self.cursor.delivered = self.cursor.delivered.max(position + 1);
                let skipped = SourceRecord {
                    partition: self.partition.clone(),
                    offset: Value::Null,
                    position: None,
                    payload: Payload::Skipped {
                        reason: format!("id {text} was delivered already"),
                    },
                };
                let mark = self.mark();
                self.buffered.push_back((skipped, Some(mark)));
                return;
            }
        }
        for (name, field) in &self.config.cursor {
            if let Some(v) = value.pointer(&field.field) {
                self.cursor.fields.insert(name.clone(), id_text(v));
            }
        }
        if self.cursor.first.as_deref() != Some(self.chain.as_str()) {
            self.cursor.first = Some(self.chain.clone());
        }
        if self.cursor.url.as_deref() != Some(url) {
            self.cursor.url = Some(url.to_string());
        }
        self.cursor.after = self.cursor.after.max(index + 1);
        if self.cursor.next != *next {
            self.cursor.next = next.clone();
        }
        self.cursor.last_id = id;
        let key = match self.config.key.as_deref() {
            Some(pointer) => value.pointer(pointer).map(id_text),
            None => id_as_text,
        };
        let time = self
            .config
            .time
            .as_deref()
            .and_then(|p| value.pointer(p))
            .and_then(crate::shared::time_millis)
            .unwrap_or(now);
        let mut record = Record::new(value);
        record.key = key.map(String::into_bytes);
        record.timestamp = Some(time);
        self.cursor.delivered = self.cursor.delivered.max(position + 1);
        let item = SourceRecord {
            partition: self.partition.clone(),
            offset: Value::Null,
            position: Some(position),
            payload: Payload::Record(record),
        };
        let mark = self.mark();
        self.buffered.push_back((item, Some(mark)));
    }

    /// The cursor as it is now, sharing its page parts with the marks before it.
    fn mark(&mut self) -> Mark {
        let cursor = &self.cursor;
        let page = match &self.page_ref {
            Some(page)
                if page.first == cursor.first
                    && page.url == cursor.url
                    && page.next == cursor.next
                    && same_plan(&page.plan, &cursor.plan) =>
            {
                page.clone()
            }
            _ => {
                let page = Arc::new(PageRef {
                    first: cursor.first.clone(),
                    url: cursor.url.clone(),
                    next: cursor.next.clone(),
                    plan: cursor.plan.clone(),
                });
                self.page_ref = Some(page.clone());
                page
            }
        };
        self.cursor.mark(page)
    }
}

/// Whether two plans are the same one (shared, not compared item by item).
fn same_plan(a: &Option<Arc<Plan>>, b: &Option<Arc<Plan>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// A page's headers and body.
type Answer = (reqwest::header::HeaderMap, Vec<u8>);

/// A page being fetched ahead; the request is dropped with it.
struct Prefetch {
    url: String,
    task: tokio::task::JoinHandle<Result<Answer, ConnectorError>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asks for page `url` as `config` says, the body filled from the cursor `fields`.
async fn fetch(
    client: HttpClient,
    config: Arc<HttpSourceConfig>,
    fields: IndexMap<String, String>,
    url: String,
) -> Result<Answer, ConnectorError> {
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| ConnectorError::user(format!("not a URL: {e}")).with_field("url"))?;
    let method = match config.method {
        Method::Get => reqwest::Method::GET,
        Method::Post => reqwest::Method::POST,
    };
    let shown = endpoint(method.as_str(), &parsed);
    let body = config.body.as_ref().map(|b| fill_json(b, &fields));
    let fetched = client
        .fetch(&shown, |client| {
            let mut request = client.request(method.clone(), parsed.clone());
            for (name, value) in &config.headers {
                request = request.header(name.as_str(), value.as_str());
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            match &config.auth {
                Some(auth) => auth.apply(request),
                None => request,
            }
        })
        .await?;
    Ok((fetched.headers, fetched.body))
}

/// What of a page asked for again was delivered already.
enum Skip {
    None,
    First(usize),
    /// Through the record with this id; its first `or_first` when it is not on the page.
    Through {
        id: Value,
        or_first: usize,
    },
}

/// A JSON value as text: strings as they are, anything else as JSON.
fn id_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn fill_json(value: &Value, fields: &IndexMap<String, String>) -> Value {
    match value {
        Value::String(s) => Value::String(fill(s, fields, false)),
        Value::Array(items) => Value::Array(items.iter().map(|v| fill_json(v, fields)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill_json(v, fields)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The `rel="next"` URL of one `Link` header value.
/// The `rel="next"` target of a `Link` header (RFC 8288): links are `<URI>; params`, separated
/// by commas outside the brackets (a URI may hold commas); `rel` may list several types.
fn next_link(header: &str) -> Option<String> {
    let mut rest = header;
    loop {
        let open = rest.find('<')?;
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        let after = &rest[close + 1..];
        // This link's parameters run to the next `<` (the next link's start).
        let params_end = after.find('<').unwrap_or(after.len());
        let params = &after[..params_end];
        let is_next = params.split(';').any(|p| {
            let Some((name, value)) = p.split_once('=') else {
                return false;
            };
            name.trim().eq_ignore_ascii_case("rel")
                && value
                    .trim()
                    .trim_end_matches(',')
                    .trim()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|rel| rel.eq_ignore_ascii_case("next"))
        });
        if is_next {
            return Some(target.to_string());
        }
        rest = after;
    }
}

fn url_without_query(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| shown(&u))
        .unwrap_or_default()
}

/// `url` with the number in query parameter `param` advanced by `by`.
fn step(url: &str, param: &str, by: u64) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    let now: u64 = url
        .query_pairs()
        .find(|(k, _)| k == param)
        .and_then(|(_, v)| v.parse().ok())?;
    Some(with_param(&url, param, &(now + by).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8288: a target may hold commas; `rel` may list several types, in any case.
    #[test]
    fn the_next_link_is_found_whatever_its_target_holds() {
        let header = r#"<https://api.example/items?page=1&fields=a,b>; rel="prev first", <https://api.example/items?page=3&fields=a,b>; rel="NEXT", <https://api.example/items?page=9>; rel=last"#;
        assert_eq!(
            next_link(header).as_deref(),
            Some("https://api.example/items?page=3&fields=a,b")
        );
        assert_eq!(
            next_link("<https://a.example/?p=2>; rel=next").as_deref(),
            Some("https://a.example/?p=2")
        );
        assert_eq!(next_link(r#"<https://a.example/?p=1>; rel="prev""#), None);
    }
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A JSON API on loopback answering each request with `pages(path and query)`.
    struct Api {
        url: String,
        pages: Arc<Mutex<HashMap<String, Value>>>,
    }

    use std::collections::HashMap;

    impl Api {
        async fn start() -> Api {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/items", listener.local_addr().unwrap());
            let pages: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
            let served = pages.clone();
            tokio::spawn(async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    let served = served.clone();
                    tokio::spawn(async move {
                        let mut request = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match socket.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&buf[..n]),
                            }
                        }
                        let line = String::from_utf8_lossy(&request).to_string();
                        let target = line.split(' ').nth(1).unwrap_or("").to_string();
                        let body = served
                            .lock()
                            .unwrap()
                            .get(&target)
                            .cloned()
                            .unwrap_or(Value::Array(Vec::new()))
                            .to_string();
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = socket.write_all(answer.as_bytes()).await;
                    });
                }
            });
            Api { url, pages }
        }

        fn serve(&self, target: &str, records: Value) {
            self.pages
                .lock()
                .unwrap()
                .insert(target.to_string(), records);
        }
    }

    fn config(yaml: &str) -> HttpSourceConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn context(offset: Option<Value>, partition: &str) -> SourceBuildContext {
        SourceBuildContext {
            component: "web".into(),
            offsets: offset
                .map(|o| [(partition.to_string(), o)].into())
                .unwrap_or_default(),
            exactly_once: true,
            ..SourceBuildContext::default()
        }
    }

    /// Polls one item at a time (as a runtime whose batches hold one record), until
    /// `records` records came or nothing more comes; the items with the offsets they carry.
    async fn items(source: &mut dyn Source, records: usize) -> Vec<SourceRecord> {
        let mut out = Vec::new();
        while out
            .iter()
            .filter(|i: &&SourceRecord| matches!(i.payload, Payload::Record(_)))
            .count()
            < records
        {
            match tokio::time::timeout(Duration::from_secs(2), source.poll(1)).await {
                Ok(Ok(Some(batch))) => out.extend(batch),
                _ => break,
            }
        }
        out
    }

    /// The name (the value of `n`) and position of each record among `items`, in order.
    fn numbered(items: &[SourceRecord]) -> Vec<(String, u64)> {
        items
            .iter()
            .filter_map(|i| match &i.payload {
                Payload::Record(r) => Some((
                    r.value["n"].as_str().unwrap_or_default().to_string(),
                    i.position?,
                )),
                _ => None,
            })
            .collect()
    }

    fn page(names: &[&str], with_id: bool) -> Value {
        Value::Array(
            names
                .iter()
                .map(|n| {
                    if with_id {
                        serde_json::json!({ "id": format!("id-{n}"), "n": n })
                    } else {
                        serde_json::json!({ "n": n })
                    }
                })
                .collect(),
        )
    }

    /// A crash after the first record's offset was stored, and the page changed before the
    /// restart (a record inserted among those sent): the records sent before the crash keep
    /// their positions, so an exactly-once sink skips them, and the new record gets a position
    /// after them all, so it is not skipped. With and without `id`.
    #[tokio::test]
    async fn a_page_changed_between_a_crash_and_the_restart_keeps_the_positions_of_what_was_sent() {
        for with_id in [true, false] {
            let api = Api::start().await;
            api.serve("/items", page(&["a", "b", "c"], with_id));
            let id = if with_id { "id: /id\n" } else { "" };
            let config = config(&format!("url: {}\ninterval: 1h\n{id}", api.url));
            let mut first = config.build(context(None, &api.url)).await.unwrap();
            let sent = items(&mut *first, 3).await;
            assert_eq!(
                numbered(&sent),
                [("a".into(), 0), ("b".into(), 1), ("c".into(), 2)]
            );
            assert!(
                matches!(sent[0].payload, Payload::Checkpoint),
                "the plan is stored before the page is sent"
            );
            // Stored: the offset after "a" (b and c were sent, not acknowledged).
            let stored = sent[1].offset.clone();
            drop(first);

            api.serve("/items", page(&["a", "x", "b", "c"], with_id));
            let mut second = config.build(context(Some(stored), &api.url)).await.unwrap();
            let resent = items(&mut *second, 3).await;
            assert_eq!(
                numbered(&resent),
                [("b".into(), 1), ("c".into(), 2), ("x".into(), 3)],
                "with id: {with_id}"
            );
        }
    }

    /// A page that slides (the latest 5 records of a feed, polled again and again) keeps a
    /// plan of its own size in the offset, and numbers each record once, in order.
    #[tokio::test]
    async fn a_sliding_page_keeps_a_plan_of_its_own_size() {
        let api = Api::start().await;
        let names: Vec<String> = (0..30).map(|n| format!("r{n:02}")).collect();
        let window = |from: usize| {
            let slice: Vec<&str> = names[from..from + 5].iter().map(String::as_str).collect();
            page(&slice, false)
        };
        api.serve("/items", window(0));
        let config = config(&format!("url: {}\ninterval: 10ms\n", api.url));
        let mut source = config.build(context(None, &api.url)).await.unwrap();
        let mut sent = items(&mut *source, 5).await;
        for from in 1..=25 {
            api.serve("/items", window(from));
            sent.extend(items(&mut *source, 1).await);
        }
        let numbered = numbered(&sent);
        let expected: Vec<(String, u64)> =
            (0..30).map(|n| (format!("r{n:02}"), n as u64)).collect();
        assert_eq!(numbered, expected);
        let offset = &sent
            .iter()
            .rev()
            .find(|i| !i.offset.is_null())
            .unwrap()
            .offset;
        assert_eq!(
            offset["plan"]["entries"].as_array().unwrap().len(),
            5,
            "{offset}"
        );
    }

    /// A crash once the plan of the next page was stored, and that page changed before the
    /// restart: the restart goes on with that page as planned.
    #[tokio::test]
    async fn a_restart_after_the_next_pages_plan_was_stored_reads_that_page_as_planned() {
        let api = Api::start().await;
        api.serve("/items?page=1", page(&["a", "b"], true));
        api.serve("/items?page=2", page(&["c", "d"], true));
        let config = config(&format!(
            "url: {}\ninterval: 1h\nid: /id\npagination: {{ type: page, param: page }}\n",
            api.url
        ));
        let mut first = config.build(context(None, &api.url)).await.unwrap();
        let sent = items(&mut *first, 4).await;
        assert_eq!(
            numbered(&sent),
            [
                ("a".into(), 0),
                ("b".into(), 1),
                ("c".into(), 2),
                ("d".into(), 3)
            ]
        );
        // Stored: the checkpoint of page 2 (c and d were sent, not acknowledged).
        let plan_of_page_2 = sent
            .iter()
            .rposition(|i| matches!(i.payload, Payload::Checkpoint))
            .unwrap();
        assert_eq!(plan_of_page_2, 3);
        let stored = sent[plan_of_page_2].offset.clone();
        drop(first);

        api.serve("/items?page=2", page(&["c", "x", "d"], true));
        let mut second = config.build(context(Some(stored), &api.url)).await.unwrap();
        let resent = items(&mut *second, 3).await;
        assert_eq!(
            numbered(&resent),
            [("c".into(), 2), ("d".into(), 3), ("x".into(), 4)]
        );
    }
}
