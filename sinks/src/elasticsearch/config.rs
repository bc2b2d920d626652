//! Configuration of the Elasticsearch sink.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_api::{FieldError, Secret};
use std::time::Duration;

/// Indexes records as documents through `_bulk`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchSinkConfig {
    /// Cluster URL, e.g. `http://127.0.0.1:9200`.
    pub url: String,
    /// Index name: `{topic}` is the record's topic, `{date}` its time as `YYYY.MM.DD`, and
    /// `{date:%Y-%m}` any chrono format of it.
    #[serde(default = "topic_template")]
    pub index: String,
    /// Mappings of indices the sink creates, e.g. `{ properties: { Date: { type: date } } }`.
    /// An existing index whose mapping differs for one of these fields is a startup error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub mappings: Option<serde_json::Value>,
    /// Settings of indices the sink creates, e.g. `{ number_of_shards: 1 }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub settings: Option<serde_json::Value>,
    /// Document `_id`: `coordinates` (`topic+partition+offset`, so a replay overwrites),
    /// `key` (the record key), `fields` (values of `id_fields` joined by `_`) or `none` (ES picks).
    #[serde(default)]
    pub document_id: DocumentId,
    /// Value fields forming the id with `document_id: fields`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub id_fields: Vec<String>,
    /// `index` (create or replace), `create` (fail on an existing id) or `upsert` (merge fields).
    #[serde(default)]
    pub write_method: WriteMethod,
    /// Tombstones (null value with a key): `delete` the document whose id is the record key
    /// (needs `document_id: key`), `ignore` them, or `refuse` them as bad records (handled as
    /// `behavior_on_malformed` says). Unset: `delete` with `document_id: key`, else `refuse`,
    /// since no other id lets a tombstone name the document it deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tombstones: Option<Tombstones>,
    /// Documents the cluster refuses for their content (mapping or parse errors): `dlq` (to the
    /// dead-letter topic), `fail` (stop the pipeline), `warn` (log and drop), `ignore` (drop).
    #[serde(default)]
    pub behavior_on_malformed: OnMalformed,
    /// Largest `_bulk` body in bytes; a batch is split into requests below it.
    #[serde(default = "default_max_bytes")]
    pub max_request_bytes: usize,
    /// `_bulk` requests in flight at once.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Compress request bodies with gzip.
    #[serde(default)]
    pub gzip: bool,
    /// Attempts at a request or document answered 429, 5xx or not at all, before the sink fails.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First wait between attempts; it doubles (with jitter) up to `max_backoff`.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
    /// Timeout of one request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// Credentials: `{ basic: { username, password } }`, `{ api_key: … }` (base64 `id:key`) or
    /// `{ bearer: … }`. Secrets are never printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// PEM file of the CA that signed the cluster's certificate (for `https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// Where the document id comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DocumentId {
    #[default]
    Coordinates,
    Key,
    Fields,
    None,
}

/// The `_bulk` action per record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WriteMethod {
    #[default]
    Index,
    Create,
    Upsert,
}

/// What a tombstone does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Tombstones {
    Delete,
    Ignore,
    Refuse,
}

/// What happens to a document the cluster refuses for its content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnMalformed {
    #[default]
    Dlq,
    Fail,
    Warn,
    Ignore,
}

/// Credentials.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    Basic { username: String, password: Secret },
    ApiKey(Secret),
    Bearer(Secret),
}

fn topic_template() -> String {
    "{topic}".into()
}
fn default_max_bytes() -> usize {
    5 * 1024 * 1024
}
fn default_in_flight() -> usize {
    2
}
fn default_attempts() -> u32 {
    10
}
fn default_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(10)
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl ElasticsearchSinkConfig {
    /// What tombstones do, the default resolved.
    pub(super) fn tombstones(&self) -> Tombstones {
        self.tombstones
            .unwrap_or(if self.document_id == DocumentId::Key {
                Tombstones::Delete
            } else {
                Tombstones::Refuse
            })
    }

    pub(super) fn check(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        match elasticsearch::http::Url::parse(&self.url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => errors.push(FieldError::new("url", "must be an http:// or https:// URL")),
        }
        if let Err(problem) = check_index_template(&self.index) {
            errors.push(FieldError::new("index", problem));
        }
        if self.tombstones == Some(Tombstones::Delete) && self.document_id != DocumentId::Key {
            errors.push(FieldError::new(
                "tombstones",
                "`delete` needs `document_id: key`: a tombstone has no value, so only its key can name the document to delete",
            ));
        }
        if self.document_id == DocumentId::Fields && self.id_fields.is_empty() {
            errors.push(FieldError::new(
                "id_fields",
                "`document_id: fields` needs the fields forming the id",
            ));
        }
        if self.document_id == DocumentId::None && self.write_method != WriteMethod::Index {
            errors.push(FieldError::new(
                "write_method",
                "`create` and `upsert` need a document id",
            ));
        }
        if self.max_in_flight == 0 {
            errors.push(FieldError::new("max_in_flight", "must be at least 1"));
        }
        if self.max_attempts == 0 {
            errors.push(FieldError::new("max_attempts", "must be at least 1"));
        }
        if self.max_request_bytes < 1024 {
            errors.push(FieldError::new(
                "max_request_bytes",
                "must be at least 1024",
            ));
        }
        if let Some(m) = &self.mappings {
            if !m.is_object() {
                errors.push(FieldError::new(
                    "mappings",
                    "must be a mapping, e.g. `{ properties: { Date: { type: date } } }`",
                ));
            }
        }
        FieldError::all(errors)
    }
}

/// Checks an `index` template against Elasticsearch's rules for index names, with `{topic}`
/// and each `{date…}` standing for a valid part: lower case; not starting with `_`, `-` or
/// `+`; none of `\ / * ? " < > | , # :` or spaces; not `.` or `..`; at most 255 bytes.
pub fn check_index_template(template: &str) -> Result<(), String> {
    let mut sample = template.replace("{topic}", "t");
    while let Some(start) = sample.find("{date") {
        let Some(len) = sample[start..].find('}') else {
            return Err(format!("`{template}`: `{{date` is not closed by `}}`"));
        };
        let inner = &sample[start + 5..start + len];
        let format = match inner.strip_prefix(':') {
            Some(f) if !f.is_empty() => f.to_string(),
            None if inner.is_empty() => "%Y.%m.%d".into(),
            _ => {
                return Err(format!(
                    "`{template}`: write `{{date}}` or `{{date:%Y.%m}}`"
                ))
            }
        };
        use chrono::format::{Item, StrftimeItems};
        if StrftimeItems::new(&format).any(|i| matches!(i, Item::Error)) {
            return Err(format!(
                "`{template}`: `{format}` is not a valid date format (see chrono's strftime: %Y, %m, %d…)"
            ));
        }
        let example = chrono::DateTime::from_timestamp(0, 0)
            .unwrap_or_default()
            .format(&format)
            .to_string();
        sample.replace_range(start..=start + len, &example);
    }
    if sample.is_empty() {
        return Err("must not be empty".into());
    }
    if sample.chars().any(|c| c.is_uppercase()) {
        return Err(format!("`{template}`: index names must be lower case"));
    }
    if sample.starts_with(['_', '-', '+']) {
        return Err(format!(
            "`{template}`: index names must not start with `_`, `-` or `+`"
        ));
    }
    if let Some(c) = sample.chars().find(|c| {
        matches!(
            c,
            '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ':'
        ) || c.is_whitespace()
    }) {
        return Err(format!("`{template}`: index names must not contain `{c}`"));
    }
    if sample == "." || sample == ".." {
        return Err(format!("`{template}` is not a valid index name"));
    }
    if sample.len() > 255 {
        return Err(format!("`{template}`: index names are at most 255 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_templates_follow_elasticsearch_naming_rules() {
        for good in [
            "{topic}",
            "bitcoin_kafka",
            "btc-{date}",
            "btc-{date:%Y.%m}",
            ".hidden",
        ] {
            assert_eq!(check_index_template(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("Bitcoin", "lower case"),
            ("_btc", "start"),
            ("-btc", "start"),
            ("btc data", "contain"),
            ("btc:1", "contain"),
            ("btc*", "contain"),
            ("btc-{date:%Q}", "not a valid date format"),
            ("btc-{date", "not closed"),
            ("btc-{date:}", "write"),
            ("..", "not a valid index name"),
        ] {
            let e = check_index_template(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(check_index_template(&"a".repeat(256))
            .unwrap_err()
            .contains("255"));
    }
}
