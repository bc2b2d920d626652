//! The running source: pages requested, records made of them, offsets and prefetching.

use super::*;

pub(super) struct HttpSource {
    pub(super) config: Arc<HttpSourceConfig>,
    /// Records are numbered for `exactly_once`: pages are planned (see [`Plan`]).
    pub(super) exactly_once: bool,
    pub(super) client: HttpClient,
    pub(super) partition: Arc<str>,
    pub(super) cursor: Cursor,
    /// The page to ask for next, when the last one had a next page.
    pub(super) next: Option<String>,
    /// The first page of the request being read.
    pub(super) chain: String,
    /// When the next poll is due (after the last page).
    pub(super) due: Option<tokio::time::Instant>,
    /// Items to deliver; those with a mark get their offset from it when last of a batch.
    pub(super) buffered: VecDeque<(SourceRecord, Option<Mark>)>,
    /// The page parts of the cursor, shared by the marks of its records.
    pub(super) page_ref: Option<Arc<PageRef>>,
    pub(super) recent: crate::shared::Recent,
    /// The next page, asked for while this one's records are sent.
    pub(super) prefetched: Option<Prefetch>,
    /// A page without a next one was read (a page that was not a page does not count: it is
    /// asked for again after `interval`).
    pub(super) read_last_page: bool,
}

/// One page, read.
pub(super) struct Page {
    pub(super) records: Vec<Value>,
    pub(super) next: Option<String>,
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
    pub(super) async fn read_page(&mut self) -> Result<(), ConnectorError> {
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
    pub(super) fn page_to_ask_again(&mut self) -> Result<(String, Skip), ConnectorError> {
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
    pub(super) fn prefetch(&mut self, url: &str) {
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
    pub(super) async fn page(&mut self, url: &str) -> Result<Answer, ConnectorError> {
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
    pub(super) fn parse(
        &self,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> Result<Page, String> {
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
    pub(super) fn emit_planned(
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
    pub(super) fn fingerprint(&self, value: &Value) -> String {
        if let Some(id) = self.config.id.as_deref().and_then(|p| value.pointer(p)) {
            return format!("id:{}", id_text(id));
        }
        let hash = sluice_api::exactly_once::fnv1a(value.to_string().as_bytes());
        format!("{hash:016x}")
    }

    pub(super) fn emit(
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
    pub(super) fn mark(&mut self) -> Mark {
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
pub(super) fn same_plan(a: &Option<Arc<Plan>>, b: &Option<Arc<Plan>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// A page's headers and body.
pub(super) type Answer = (reqwest::header::HeaderMap, Vec<u8>);

/// A page being fetched ahead; the request is dropped with it.
pub(super) struct Prefetch {
    pub(super) url: String,
    pub(super) task: tokio::task::JoinHandle<Result<Answer, ConnectorError>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asks for page `url` as `config` says, the body filled from the cursor `fields`.
pub(super) async fn fetch(
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
pub(super) enum Skip {
    None,
    First(usize),
    /// Through the record with this id; its first `or_first` when it is not on the page.
    Through {
        id: Value,
        or_first: usize,
    },
}
