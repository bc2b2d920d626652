//! `mode: stream`: the filtered stream, reconnected as X's rules say.

use super::api::Api;
use super::*;

/// Reconnect attempts in a row since the stream last delivered something, per kind of failure.
#[derive(Debug, Default)]
pub(super) struct Failures {
    pub(super) network: u32,
    pub(super) http: u32,
    pub(super) rate_limited: u32,
}

/// Why the stream must be opened again.
#[derive(Debug)]
pub(super) enum Dropped {
    Network(String),
    Http(String),
    /// The reason, and the wait the server asked for.
    RateLimited(String, Option<Duration>),
}

impl Failures {
    /// The wait before the next attempt after `dropped`, per X's reconnect rules.
    pub(super) fn wait(&mut self, dropped: &Dropped, rules: &Reconnect) -> Duration {
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

pub(super) struct StreamSource {
    pub(super) api: Api,
    /// The rules were synced (the first poll does it: a run that cannot fails with exit 1,
    /// as every refusal of the API does).
    pub(super) rules_synced: bool,
    /// Client without an overall timeout, for the stream's long-lived connection.
    pub(super) streaming: reqwest::Client,
    pub(super) response: Option<reqwest::Response>,
    /// Bytes of a line not yet complete.
    pub(super) pending: Vec<u8>,
    pub(super) failures: Failures,
    pub(super) recent: Recent,
    /// The newest post delivered (the offset).
    pub(super) last_id: Option<String>,
    /// The stream was not connected for a while and `backfill: recent_search` is set: the
    /// gap is read through recent search once it is connected again.
    pub(super) backfill_due: bool,
    /// Why the stream must be opened again, before reading on.
    pub(super) dropped: Option<Dropped>,
    pub(super) buffered: VecDeque<SourceRecord>,
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
    pub(super) async fn read(&mut self) -> Result<(), ConnectorError> {
        loop {
            if let Some(why) = self.dropped.take() {
                self.response = None;
                self.pending.clear();
                self.backfill_due =
                    self.api.config.backfill == Backfill::RecentSearch && self.last_id.is_some();
                if matches!(why, Dropped::RateLimited(..)) {
                    self.api.client.show_throttled(true);
                }
                let wait = self.failures.wait(&why, &self.api.config.reconnect);
                let (Dropped::Network(reason)
                | Dropped::Http(reason)
                | Dropped::RateLimited(reason, _)) = &why;
                tracing::warn!(?wait, "the X stream dropped: {reason}; reconnecting");
                tokio::time::sleep(wait).await;
            }
            if self.response.is_none() {
                match self.connect().await? {
                    Ok(response) => {
                        self.response = Some(response);
                        self.api.client.show_throttled(false);
                        if std::mem::take(&mut self.backfill_due) {
                            self.backfill().await?;
                            if !self.buffered.is_empty() {
                                return Ok(());
                            }
                        }
                    }
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

    /// Sends post `id`; the offset is the newest post delivered (a backfilled post older than
    /// one the stream sent does not move it back).
    fn deliver(&mut self, id: String, record: Record) {
        if self
            .last_id
            .as_deref()
            .is_none_or(|last| newer_id(&id, last))
        {
            self.last_id = Some(id);
        }
        self.buffered.push_back(SourceRecord {
            partition: STREAM_PARTITION.into(),
            offset: json!({ "last_id": self.last_id }),
            position: None,
            payload: Payload::Record(record),
        });
    }

    /// Reads through recent search what was posted after the last post delivered (what a
    /// reconnect or a restart missed) and sends it oldest first; the stream's copies of those
    /// posts are then skipped as duplicates.
    async fn backfill(&mut self) -> Result<(), ConnectorError> {
        let Some(since) = self.last_id.clone() else {
            return Ok(());
        };
        let limit = self.api.config.backfill_limit;
        let mut from = None;
        let mut page: Option<String> = None;
        let mut found: Vec<(u64, Record)> = Vec::new();
        loop {
            let answer = self
                .api
                .search_page(Some(&since), &mut from, page.as_deref())
                .await?;
            let posts = answer["data"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            for post in posts {
                let number = post["id"].as_str().and_then(|id| id.parse::<u64>().ok());
                match (number, self.api.record(post, &answer["includes"], None)) {
                    (Some(number), Some(record)) => found.push((number, record)),
                    // Not a post with a numeric id: dead-lettered, as the stream's are.
                    _ => {
                        let raw = post.to_string().into_bytes();
                        let bad = self.api.bad(
                            STREAM_PARTITION,
                            json!({ "last_id": self.last_id }),
                            format!("a backfilled post without a numeric id: {}", excerpt(&raw)),
                            raw,
                        );
                        self.buffered.push_back(bad);
                    }
                }
            }
            match answer["meta"]["next_token"].as_str() {
                Some(next) if found.len() < limit => page = Some(next.to_string()),
                Some(_) => {
                    tracing::warn!(
                        "the backfill read the newest {} posts (`backfill_limit`); older posts made since post {since} are not read",
                        found.len()
                    );
                    break;
                }
                None => break,
            }
        }
        found.sort_by_key(|(number, _)| *number);
        let mut sent = 0;
        for (number, record) in found {
            let id = number.to_string();
            if self.recent.insert(&id) {
                self.deliver(id, record);
                sent += 1;
            }
        }
        tracing::info!(
            since_id = %since,
            sent,
            "read through recent search what the stream missed"
        );
        Ok(())
    }

    /// Opens the stream: the response, a failure to reconnect after, or a failure that ends
    /// the run (credentials refused, a request X will never accept).
    pub(super) async fn connect(
        &self,
    ) -> Result<Result<reqwest::Response, Dropped>, ConnectorError> {
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
                    sluice_api::redact_url(&e.to_string())
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
    pub(super) fn take_lines(&mut self) -> Option<Dropped> {
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
    pub(super) fn message(&mut self, line: &[u8]) -> Option<Dropped> {
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
            self.deliver(id, record);
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

/// Whether post id `a` is newer than `b` (ids are numbers that grow with time).
fn newer_id(a: &str, b: &str) -> bool {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) => a > b,
        _ => (a.len(), a) > (b.len(), b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn reconnect_waits_follow_x_rules_and_reset_after_data() {
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

    pub(super) fn stream_source() -> StreamSource {
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
            backfill_due: false,
            dropped: None,
            buffered: VecDeque::new(),
        }
    }

    /// Lines split across chunks, keep-alives, a duplicate, an unknown message and a line that
    /// is not JSON: posts once each with their author and tags, the bad line kept as one.
    #[test]
    pub(super) fn stream_lines_become_posts_once_each_and_a_disconnect_ends_the_read() {
        let mut source = stream_source();
        let fixture =
            include_str!("../../../../tests/fixtures/api/twitter-v2-filtered-stream.ndjson");
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
    pub(super) fn a_connection_exception_is_waited_out_like_a_429() {
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
}
