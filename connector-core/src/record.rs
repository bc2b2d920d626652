//! The record: what flows from sources through topics into sinks.

use serde_json::Value;
use std::sync::Arc;

/// Headers in arrival order; a name may repeat, as in Kafka.
pub type Headers = Vec<(String, Vec<u8>)>;

/// One record. Sources fill `key`, `value`, `headers` and `timestamp`; the transport fills the
/// coordinates (`topic`, `partition`, `offset`) of records read from a topic.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record {
    /// Partitioning key; records with the same key land in the same partition, in order.
    pub key: Option<Vec<u8>>,
    /// The payload as JSON. A tombstone is `Value::Null` with a key.
    pub value: Value,
    /// The payload already written as JSON text, by a source asked to
    /// ([`SourceBuildContext::encode_values`](crate::SourceBuildContext)): records bound for
    /// Kafka then skip building and encoding a `Value` tree. While it is `Some`, `value` is
    /// `Null` and means nothing; [`Record::decode_value`] turns the text back into `value`.
    /// Only writers and the source task see such records; readers always fill `value`.
    pub encoded_value: Option<Vec<u8>>,
    /// Headers in arrival order.
    pub headers: Headers,
    /// Milliseconds since the Unix epoch.
    pub timestamp: Option<i64>,
    /// Topic the record was read from, or is written to (shared by the records of a topic).
    pub topic: Arc<str>,
    /// Partition the record was read from (-1 before it is written).
    pub partition: i32,
    /// Offset in that partition (-1 before it is written).
    pub offset: i64,
}

impl Record {
    /// A record holding `value`, not yet written anywhere.
    pub fn new(value: Value) -> Self {
        Record {
            value,
            partition: -1,
            offset: -1,
            ..Record::default()
        }
    }

    /// A record holding `value`, with this one's key, headers, timestamp and coordinates.
    pub fn with_value(&self, value: Value) -> Record {
        Record {
            key: self.key.clone(),
            value,
            encoded_value: None,
            headers: self.headers.clone(),
            timestamp: self.timestamp,
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Moves `encoded_value`, if any, into `value`; fails on text that is not JSON.
    pub fn decode_value(&mut self) -> Result<(), serde_json::Error> {
        if let Some(text) = self.encoded_value.take() {
            self.value = serde_json::from_slice(&text)?;
        }
        Ok(())
    }

    /// True for a tombstone: a record without a value.
    pub fn is_tombstone(&self) -> bool {
        self.encoded_value.is_none() && self.value.is_null()
    }

    /// The key as text, if it is valid UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// `topic/partition@offset`, for messages.
    pub fn coordinates(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// Field `name` of an object: compared in order in a small object (a record's few fields),
/// which is cheaper than hashing the name, and looked up by hash in a large one.
pub fn field<'v>(object: &'v serde_json::Map<String, Value>, name: &str) -> Option<&'v Value> {
    if object.len() <= 16 {
        object.iter().find(|(key, _)| *key == name).map(|(_, v)| v)
    } else {
        object.get(name)
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
