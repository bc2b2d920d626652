//! The record: what flows from sources through topics into sinks.

use serde_json::Value;

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
    /// Headers in arrival order.
    pub headers: Headers,
    /// Milliseconds since the Unix epoch.
    pub timestamp: Option<i64>,
    /// Topic the record was read from, or is written to.
    pub topic: String,
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

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
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

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
