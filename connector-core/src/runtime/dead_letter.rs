//! Bad records: fail the pipeline (`tolerance: none`) or become a dead-letter record whose
//! headers say where it came from and what went wrong (Kafka Connect's `__connect.errors.*`).

use crate::config::{ErrorsConfig, Tolerance};
use crate::transport::TopicWriter;
use crate::{ConnectorError, Record};
use serde_json::Value;
use std::sync::Arc;

/// Header names of dead-letter records.
pub mod headers {
    pub const TOPIC: &str = "sluice.error.topic";
    pub const PARTITION: &str = "sluice.error.partition";
    pub const OFFSET: &str = "sluice.error.offset";
    pub const COMPONENT: &str = "sluice.error.component";
    pub const STAGE: &str = "sluice.error.stage";
    pub const MESSAGE: &str = "sluice.error.message";
    pub const LOCATION: &str = "sluice.error.location";
}

/// Routes bad records for one pipeline.
#[derive(Clone)]
pub struct DeadLetters {
    config: ErrorsConfig,
    pub(crate) writer: Arc<dyn TopicWriter>,
}

/// A record that failed somewhere in a pipeline.
pub struct Failure<'a> {
    pub component: &'a str,
    /// `source`, `deserialize`, `transform` or `put`.
    pub stage: &'a str,
    pub message: String,
    /// The failed record: its key, headers and coordinates (topic/partition/offset, when read from one).
    pub record: Record,
    /// The original bytes when they could not be decoded; they become the value, as a string.
    pub raw: Option<Vec<u8>>,
    /// Where outside Sluice it came from, e.g. `BTC-USD.csv line 42`.
    pub location: Option<String>,
}

impl DeadLetters {
    pub fn new(config: ErrorsConfig, writer: Arc<dyn TopicWriter>) -> Self {
        DeadLetters { config, writer }
    }

    /// The dead-letter record for `failure`, or the pipeline error when bad records are not tolerated.
    pub fn route(&self, failure: Failure<'_>) -> Result<Record, ConnectorError> {
        let topic = match (&self.config.tolerance, &self.config.dead_letter_topic) {
            (Tolerance::All, Some(topic)) => topic,
            _ => {
                let at = failure
                    .location
                    .clone()
                    .unwrap_or_else(|| failure.record.coordinates());
                return Err(ConnectorError::user(format!(
                    "bad record at {at} ({} stage): {} — set `errors.tolerance: all` with a `dead_letter_topic` to route bad records aside",
                    failure.stage, failure.message
                ))
                .in_component(failure.component));
            }
        };
        let Failure {
            component,
            stage,
            message,
            record,
            raw,
            location,
        } = failure;
        let mut dead = Record::new(match raw {
            Some(raw) => Value::String(String::from_utf8_lossy(&raw).into_owned()),
            None => record.value,
        });
        dead.key = record.key;
        dead.timestamp = record.timestamp;
        dead.headers = record.headers;
        if record.offset >= 0 {
            dead.headers
                .push((headers::TOPIC.into(), record.topic.as_bytes().to_vec()));
            dead.headers.push((
                headers::PARTITION.into(),
                record.partition.to_string().into_bytes(),
            ));
            dead.headers.push((
                headers::OFFSET.into(),
                record.offset.to_string().into_bytes(),
            ));
        }
        dead.headers
            .push((headers::COMPONENT.into(), component.as_bytes().to_vec()));
        dead.headers
            .push((headers::STAGE.into(), stage.as_bytes().to_vec()));
        dead.headers
            .push((headers::MESSAGE.into(), message.into_bytes()));
        if let Some(location) = location {
            dead.headers
                .push((headers::LOCATION.into(), location.into_bytes()));
        }
        dead.topic = topic.as_str().into();
        Ok(dead)
    }
}
