//! The running Elasticsearch sink.

use super::config::{Auth, ElasticsearchSinkConfig, OnMalformed};
use super::request::{bulk_items, BulkItem};
use super::retry::{backoff, item_verdict, status_retryable, Verdict};
use crate::rounds::Rounds;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use elasticsearch::http::transport::{SingleNodeConnectionPool, Transport, TransportBuilder};
use elasticsearch::http::{Method, Url};
use futures::StreamExt;
use serde_json::Value;
use sluice_api::{
    async_trait, redact_url, ConnectorError, PutOutcome, Record, Sink, SinkBuildContext,
};
use std::collections::HashSet;
use std::sync::Arc;

pub(super) struct ElasticsearchSink {
    config: ElasticsearchSinkConfig,
    transport: Transport,
    /// Indices known to exist with a compatible mapping.
    ready: HashSet<String>,
}

/// An answer: HTTP status and JSON body (null when there was none).
struct Answer {
    status: u16,
    body: Value,
}

impl ElasticsearchSink {
    pub async fn connect(
        config: ElasticsearchSinkConfig,
        ctx: &SinkBuildContext,
    ) -> Result<Self, ConnectorError> {
        let mut url = Url::parse(&config.url).map_err(|e| {
            ConnectorError::user(format!("bad `url`: {}", redact_url(&e.to_string())))
                .with_field("url")
        })?;
        // `https://user:password@host`: basic auth, unless `auth` says otherwise.
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8_lossy()
                .into_owned()
        };
        let from_url = (!url.username().is_empty()).then(|| {
            Credentials::Basic(
                decode(url.username()),
                decode(url.password().unwrap_or_default()),
            )
        });
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(config.request_timeout)
            .request_body_compression(config.gzip)
            .disable_proxy();
        builder = match &config.auth {
            None => match from_url {
                Some(credentials) => builder.auth(credentials),
                None => builder,
            },
            Some(Auth::Basic { username, password }) => builder.auth(Credentials::Basic(
                username.clone(),
                password.expose().to_string(),
            )),
            Some(Auth::ApiKey(key)) => {
                builder.auth(Credentials::EncodedApiKey(key.expose().to_string()))
            }
            Some(Auth::Bearer(token)) => {
                builder.auth(Credentials::Bearer(token.expose().to_string()))
            }
        };
        if let Some(ca) = config.ca_file.as_ref().filter(|f| !f.is_empty()) {
            let pem = std::fs::read(ca).map_err(|e| {
                ConnectorError::user(format!("cannot read `{ca}`: {e}")).with_field("ca_file")
            })?;
            let cert = Certificate::from_pem(&pem).map_err(|e| {
                ConnectorError::user(format!("`{ca}` is not a PEM certificate: {e}"))
                    .with_field("ca_file")
            })?;
            builder = builder.cert_validation(CertificateValidation::Full(cert));
        }
        let transport = builder
            .build()
            .map_err(|e| ConnectorError::internal(format!("cannot build the HTTP client: {e}")))?;
        let mut sink = ElasticsearchSink {
            config,
            transport,
            ready: HashSet::new(),
        };
        let info = sink.call(Method::Get, "/", None).await?;
        match info.status {
            200 => {}
            // `GET /` needs the `monitor` cluster privilege, which a least-privilege writer
            // may lack: the credentials themselves were accepted.
            403 => {
                tracing::warn!(component = %ctx.component, url = %redact_url(&sink.config.url), "Elasticsearch refused `GET /` (403: no `monitor` privilege); going on without the cluster's version")
            }
            401 => {
                return Err(ConnectorError::external(format!(
                    "Elasticsearch at {} refused the credentials ({})",
                    redact_url(&sink.config.url),
                    info.status
                )))
            }
            s => {
                return Err(ConnectorError::external(format!(
                    "Elasticsearch at {} answered {s} to `GET /`",
                    redact_url(&sink.config.url)
                )))
            }
        }
        let version = info
            .body
            .pointer("/version/number")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let cluster = info
            .body
            .get("cluster_name")
            .and_then(Value::as_str)
            .unwrap_or("?");
        tracing::info!(component = %ctx.component, url = %redact_url(&sink.config.url), %cluster, %version, "connected to Elasticsearch");
        if !sink.config.index.contains('{') {
            let index = sink.config.index.clone();
            sink.ensure_index(&index).await?;
        }
        Ok(sink)
    }

    /// A failed request as a retryable error, credentials in URLs redacted.
    fn unreachable(&self, e: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::transient(redact_url(&format!(
            "Elasticsearch at {}: {e}",
            self.config.url
        )))
    }

    /// One request; connection failures become retryable errors.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ConnectorError> {
        let mut headers = HeaderMap::new();
        let content_type = if path.ends_with("_bulk") {
            "application/x-ndjson"
        } else {
            "application/json"
        };
        // Both set here, so that no update of the client changes the media types sent.
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let response = self
            .transport
            .send(method, path, headers, None::<&()>, body, None)
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status_code().as_u16();
        let text = response.text().await.map_err(|e| self.unreachable(e))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Answer { status, body })
    }

    /// Creates `index` with the configured mappings, or checks an existing one against them.
    async fn ensure_index(&mut self, index: &str) -> Result<(), ConnectorError> {
        if self.ready.contains(index) {
            return Ok(());
        }
        let mut create = serde_json::Map::new();
        if let Some(m) = &self.config.mappings {
            create.insert("mappings".into(), m.clone());
        }
        if let Some(s) = &self.config.settings {
            create.insert("settings".into(), s.clone());
        }
        let body =
            serde_json::to_vec(&create).map_err(|e| ConnectorError::internal(e.to_string()))?;
        let created = self
            .call(Method::Put, &format!("/{index}"), Some(body))
            .await?;
        let exists = created.body.pointer("/error/type").and_then(Value::as_str)
            == Some("resource_already_exists_exception");
        match created.status {
            200 | 201 => tracing::info!(%index, "created index"),
            400 if exists => self.check_mapping(index).await?,
            // No `create_index` privilege: fine if the index exists already.
            403 => {
                let head = self.call(Method::Head, &format!("/{index}"), None).await?;
                match head.status {
                    200 => self.check_mapping(index).await?,
                    404 => {
                        return Err(ConnectorError::external(format!(
                            "index `{index}` does not exist and these credentials may not create it (403); create it, or grant `create_index` on it"
                        )))
                    }
                    s => {
                        return Err(ConnectorError::external(format!(
                            "could not create index `{index}` (403), and checking that it exists answered {s}"
                        )))
                    }
                }
            }
            s => {
                let reason = created
                    .body
                    .pointer("/error/reason")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let error = format!("could not create index `{index}` ({s}): {reason}");
                return Err(if status_retryable(s) {
                    ConnectorError::transient(error)
                } else {
                    ConnectorError::external(error)
                });
            }
        }
        self.ready.insert(index.to_string());
        Ok(())
    }

    /// An existing index must map every configured field to the configured type.
    async fn check_mapping(&self, index: &str) -> Result<(), ConnectorError> {
        let Some(wanted) = self
            .config
            .mappings
            .as_ref()
            .and_then(|m| m.get("properties"))
            .and_then(Value::as_object)
        else {
            return Ok(());
        };
        let answer = self
            .call(Method::Get, &format!("/{index}/_mapping"), None)
            .await?;
        if answer.status == 403 {
            tracing::warn!(%index, "cannot read the index's mapping (403: no `view_index_metadata` privilege); not checking it against `mappings`");
            return Ok(());
        }
        let have = answer
            .body
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(|i| i.pointer("/mappings/properties"))
            .cloned()
            .unwrap_or(Value::Null);
        for (field, spec) in wanted {
            let want = spec.get("type").and_then(Value::as_str);
            let got = have
                .get(field)
                .and_then(|f| f.get("type"))
                .and_then(Value::as_str);
            if let (Some(want), Some(got)) = (want, got) {
                if want != got {
                    return Err(ConnectorError::user(format!(
                        "index `{index}` exists and its mapping for field `{field}` conflicts (type {got}, the pipeline declares {want})"
                    ))
                    .with_field("mappings"));
                }
            }
        }
        Ok(())
    }

    /// Sends `items` with `_bulk` until each is done or refused; returns the refused ones. A
    /// request too large for the cluster (413) is split; a single document too large is refused.
    async fn send(
        &self,
        mut pending: Vec<BulkItem>,
    ) -> Result<Vec<(usize, String)>, ConnectorError> {
        let mut refused = Vec::new();
        let mut last_problem = String::new();
        for attempt in 0..self.config.max_attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff(
                    attempt - 1,
                    self.config.initial_backoff,
                    self.config.max_backoff,
                ))
                .await;
            }
            let body: Vec<u8> = pending
                .iter()
                .flat_map(|i| i.lines.iter().copied())
                .collect();
            let answer = match self.call(Method::Post, "/_bulk", Some(body)).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e.message, attempt, "bulk request failed; retrying");
                    last_problem = e.message;
                    continue;
                }
            };
            if answer.status == 413 {
                if pending.len() == 1 {
                    let item = &pending[0];
                    refused.push((
                        item.position,
                        format!(
                            "document is {} bytes; Elasticsearch refused it as too large (413, over `http.max_content_length`)",
                            item.lines.len()
                        ),
                    ));
                    return Ok(refused);
                }
                let second = pending.split_off(pending.len() / 2);
                refused.extend(Box::pin(self.send(pending)).await?);
                refused.extend(Box::pin(self.send(second)).await?);
                return Ok(refused);
            }
            if answer.status != 200 {
                let reason = answer
                    .body
                    .pointer("/error/reason")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                last_problem = format!("`_bulk` answered {}: {reason}", answer.status);
                if status_retryable(answer.status) {
                    tracing::warn!(
                        status = answer.status,
                        attempt,
                        "bulk request refused; retrying"
                    );
                    continue;
                }
                return Err(ConnectorError::external(last_problem));
            }
            let results = answer
                .body
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if results.len() != pending.len() {
                last_problem = format!(
                    "`_bulk` answered {} items for {} documents",
                    results.len(),
                    pending.len()
                );
                continue;
            }
            let mut again = Vec::new();
            for (item, result) in pending.into_iter().zip(&results) {
                match item_verdict(result) {
                    Verdict::Done => {}
                    Verdict::Retry(reason) => {
                        last_problem = reason;
                        again.push(item);
                    }
                    Verdict::Refused(reason) => refused.push((item.position, reason)),
                    Verdict::Setup(reason) => {
                        return Err(ConnectorError::external(format!(
                            "Elasticsearch refused a document for the sink's setup, not its content: {reason}"
                        )))
                    }
                }
            }
            pending = again;
            if pending.is_empty() {
                return Ok(refused);
            }
            tracing::debug!(documents = pending.len(), "retrying documents answered 429");
        }
        Err(ConnectorError::transient(format!(
            "{} documents not indexed after {} attempts: {last_problem}",
            pending.len(),
            self.config.max_attempts
        )))
    }
}

/// `items` in rounds where each document id appears once: requests of a round go out at once
/// and their 429'd items are retried alone, so two writes to one id never race; a later write
/// to an id waits for the next round.
fn rounds(items: Vec<BulkItem>) -> Vec<Vec<BulkItem>> {
    let mut seen = Rounds::default();
    let mut rounds: Vec<Vec<BulkItem>> = vec![Vec::new()];
    for item in items {
        let round = match &item.id {
            Some(id) => seen.of((&item.index, id)),
            None => 0,
        };
        if rounds.len() <= round {
            rounds.resize_with(round + 1, Vec::new);
        }
        rounds[round].push(item);
    }
    rounds
}

#[async_trait]
impl Sink for ElasticsearchSink {
    async fn put(&mut self, batch: &[Arc<Record>]) -> Result<PutOutcome, ConnectorError> {
        let (items, mut refused) = bulk_items(&self.config, batch);
        let indices: HashSet<String> = items.iter().map(|i| i.index.clone()).collect();
        for index in indices {
            self.ensure_index(&index).await?;
        }
        for round in rounds(items) {
            // Requests below `max_request_bytes`, `max_in_flight` of them at once.
            let mut chunks: Vec<Vec<BulkItem>> = Vec::new();
            let mut size = 0;
            for item in round {
                if chunks.is_empty() || size + item.lines.len() > self.config.max_request_bytes {
                    chunks.push(Vec::new());
                    size = 0;
                }
                size += item.lines.len();
                if let Some(last) = chunks.last_mut() {
                    last.push(item);
                }
            }
            let this = &*self;
            let results: Vec<Result<Vec<(usize, String)>, ConnectorError>> =
                futures::stream::iter(chunks)
                    .map(|chunk| this.send(chunk))
                    .buffer_unordered(self.config.max_in_flight)
                    .collect()
                    .await;
            for result in results {
                refused.extend(result?);
            }
        }
        refused.sort_by_key(|(i, _)| *i);
        let mut outcome = PutOutcome::default();
        match self.config.behavior_on_malformed {
            OnMalformed::Dlq => outcome.rejected = refused,
            OnMalformed::Fail => {
                if let Some((i, reason)) = refused.first() {
                    return Err(ConnectorError::user(format!(
                        "document from {} refused: {reason}",
                        batch[*i].coordinates()
                    )));
                }
            }
            OnMalformed::Warn => {
                for (i, reason) in &refused {
                    tracing::warn!(record = %batch[*i].coordinates(), %reason, "document refused and dropped");
                }
            }
            OnMalformed::Ignore => {}
        }
        Ok(outcome)
    }

    /// `_bulk` answers once documents are durable in the translog: nothing more to do.
    async fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(position: usize, id: &str) -> BulkItem {
        BulkItem {
            position,
            index: "i".into(),
            id: Some(id.into()),
            lines: Vec::new(),
        }
    }

    #[test]
    fn a_second_write_to_an_id_waits_for_the_next_round() {
        let rounds = rounds(vec![
            item(0, "a"),
            item(1, "b"),
            item(2, "a"),
            item(3, "c"),
            item(4, "a"),
        ]);
        let positions: Vec<Vec<usize>> = rounds
            .iter()
            .map(|r| r.iter().map(|i| i.position).collect())
            .collect();
        assert_eq!(positions, [vec![0, 1, 3], vec![2], vec![4]]);
    }
}
