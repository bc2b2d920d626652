//! Bad records: fail the pipeline (`tolerance: none`) or become a dead-letter record whose
//! headers say where it came from and what went wrong (Kafka Connect's `__connect.errors.*`).

use crate::config::{DeadLetterRefused, ErrorsConfig, Tolerance};
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

    /// The dead-letter record for `failure`, or the pipeline error when bad records are not
    /// tolerated. A record read from the dead-letter topic is never routed back to it (that
    /// loops): it fails the run, or with `dead_letter_refused: log` is logged and dropped
    /// (`Ok(None)`).
    pub fn route(&self, failure: Failure<'_>) -> Result<Option<Record>, ConnectorError> {
        let from_dead_letters = failure.record.offset >= 0
            && self
                .config
                .dead_letter_topic
                .as_deref()
                .is_some_and(|t| *t == *failure.record.topic);
        if from_dead_letters {
            let at = failure.record.coordinates();
            if self.config.dead_letter_refused == DeadLetterRefused::Log {
                let headers: Vec<(String, String)> = failure
                    .record
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                    .collect();
                tracing::warn!(component = %failure.component, stage = failure.stage, error = %failure.message, value = %failure.record.value, ?headers, "dropping dead letter {at} that a sink of the dead-letter topic refused (`dead_letter_refused: log`)");
                return Ok(None);
            }
            return Err(ConnectorError::user(format!(
                "dead letter at {at} was refused ({} stage): {} — it is not sent back to the dead-letter topic it came from; fix the sink, or set `errors.dead_letter_refused: log` to log and drop such records",
                failure.stage, failure.message
            ))
            .in_component(failure.component));
        }
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
            // Dead letters of sinks reach the dead-letter topic in no order of their source
            // partition, so its position would make an exactly-once sink of that topic skip
            // earlier-numbered ones: it is dropped (the record's coordinates say where it was).
            dead.headers
                .retain(|(name, _)| name != crate::exactly_once::POSITION_HEADER);
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
        Ok(Some(dead))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exactly_once::{position_of, stamp, Position};
    use crate::transport::embedded::EmbeddedTransport;
    use crate::transport::Transport;

    fn failure(record: Record) -> Failure<'static> {
        Failure {
            component: "c",
            stage: "put",
            message: "refused".into(),
            record,
            raw: None,
            location: None,
        }
    }

    /// A sink's dead letter loses its exactly-once position (dead letters of several sinks and
    /// partitions reach the dead-letter topic out of their source order); a source's keeps it.
    #[test]
    fn only_dead_letters_made_at_the_source_keep_their_position() {
        let config = ErrorsConfig {
            tolerance: Tolerance::All,
            dead_letter_topic: Some("dlq".into()),
            ..ErrorsConfig::default()
        };
        let transport = EmbeddedTransport::new(10, std::env::temp_dir());
        let letters = DeadLetters::new(config, transport.writer());
        let mut read = Record::new(serde_json::json!(1));
        stamp(&mut read, "p/c/f", Position { input: 9, index: 0 });
        read.topic = "t".into();
        read.partition = 0;
        read.offset = 4;
        let mut made = read.clone();
        made.offset = -1;
        let dead = letters.route(failure(read)).unwrap().unwrap();
        assert_eq!(position_of(&dead), None);
        let dead = letters.route(failure(made)).unwrap().unwrap();
        assert_eq!(
            position_of(&dead),
            Some(("p/c/f", Position { input: 9, index: 0 }))
        );
    }
}
