//! The calls both modes make: rules, recent search, and posts made records.

use super::*;

/// The API calls both modes share.
pub(super) struct Api {
    pub(super) client: HttpClient,
    pub(super) config: Arc<TwitterSourceConfig>,
}

impl Api {
    pub(super) fn url(&self, path: &str) -> Result<reqwest::Url, ConnectorError> {
        at_base(&self.config.base_url, path)
    }

    /// `tweet.fields`, `expansions` and `user.fields`, those that are set.
    pub(super) fn fields(&self, url: &mut reqwest::Url) {
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
    pub(super) async fn call(
        &self,
        url: reqwest::Url,
        body: Option<Value>,
    ) -> Result<Value, ConnectorError> {
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
        json_of(&shown, &fetched.body)
    }

    /// One page of recent search for the configured query: posts after `since_id` (all
    /// within X's 7 days when `None`), the page `next_token` names. X refuses (400) a
    /// `since_id` older than its 7-day window; then the search asks from the window's edge
    /// (`start_time`) instead, says which posts may be missing, and `from` keeps that edge for
    /// the rest of the scan (X wants the same parameters with each `next_token`).
    pub(super) async fn search_page(
        &self,
        since_id: Option<&str>,
        from: &mut Option<String>,
        next_token: Option<&str>,
    ) -> Result<Value, ConnectorError> {
        loop {
            let mut url = self.url("/2/tweets/search/recent")?;
            url.query_pairs_mut()
                .append_pair("query", &self.config.search_query())
                .append_pair("max_results", &self.config.max_results.to_string());
            self.fields(&mut url);
            match (from.as_deref(), since_id) {
                (Some(start), _) => {
                    url.query_pairs_mut().append_pair("start_time", start);
                }
                (None, Some(since)) => {
                    url.query_pairs_mut().append_pair("since_id", since);
                }
                (None, None) => {}
            }
            if let Some(token) = next_token {
                url.query_pairs_mut().append_pair("next_token", token);
            }
            let shown = endpoint("GET", &url);
            let token = self.config.bearer_token.clone();
            let fetched = self
                .client
                .fetch_taking(&shown, &[400], |client| {
                    client.get(url.clone()).bearer_auth(token.expose())
                })
                .await?;
            if fetched.status == StatusCode::BAD_REQUEST {
                let refused_since = String::from_utf8_lossy(&fetched.body).contains("since_id");
                match since_id {
                    Some(since) if from.is_none() && refused_since => {
                        let edge = recent_search_edge(SystemTime::now());
                        tracing::warn!(
                            since_id = %since,
                            "X refused `since_id` {since}, older than recent search's 7 days ({}): reading from {edge} instead; posts between that post and {edge} cannot be read any more",
                            excerpt(&fetched.body)
                        );
                        *from = Some(edge);
                        continue;
                    }
                    _ => {
                        return Err(ConnectorError::user(format!(
                            "{shown} answered 400: X refused the search ({}); check `query`",
                            excerpt(&fetched.body)
                        ))
                        .with_field("query"))
                    }
                }
            }
            return json_of(&shown, &fetched.body);
        }
    }

    /// Makes the stream's rules those of the config: stale ones deleted, missing ones added
    /// after X accepted them in a dry run.
    pub(super) async fn sync_rules(&self) -> Result<(), ConnectorError> {
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

    pub(super) async fn delete_rules(
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
    pub(super) fn record(
        &self,
        data: &Value,
        includes: &Value,
        matching: Option<&Value>,
    ) -> Option<Record> {
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

    pub(super) fn bad(
        &self,
        partition: &str,
        offset: Value,
        message: String,
        raw: Vec<u8>,
    ) -> SourceRecord {
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
pub(super) fn refused_rules(answer: &Value) -> Vec<(String, String, String)> {
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

/// The oldest `start_time` recent search takes, with a minute's margin: 7 days ago.
pub(super) fn recent_search_edge(now: SystemTime) -> String {
    let edge = now - Duration::from_secs(7 * 86_400 - 60);
    chrono::DateTime::<chrono::Utc>::from(edge).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An answer's body as JSON, or an error naming `shown` (the endpoint) with an excerpt.
fn json_of(shown: &str, body: &[u8]) -> Result<Value, ConnectorError> {
    serde_json::from_slice(body).map_err(|e| {
        ConnectorError::external(format!(
            "{shown} answered with a body that is not JSON ({e}): {}",
            excerpt(body)
        ))
    })
}
