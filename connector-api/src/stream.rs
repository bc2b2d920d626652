//! Stream transforms: stateful steps between topics (windows, indicators, anomalies,
//! forecasts). Each reads its `inputs` as a consumer group and writes its `topic`.
//!
//! State is kept per input partition and per key, and is plain data ([`serde_json::Value`])
//! so that the runtime can checkpoint it together with the input offset it reflects, and
//! restore it for just the partitions a worker is assigned. An operator sees the records of
//! one partition in order; records of one key must therefore be in one partition (key them by
//! what they are grouped by).

use crate::topic::TopicPartition;
use crate::{ConnectorError, FieldError, Record};
use std::fmt::Debug;

/// The YAML config of a stream transform; `type:` picks the implementation.
#[typetag::serde(tag = "type")]
pub trait StreamTransformConfig: Debug + Send + Sync {
    /// Checks the config without any I/O.
    fn validate(&self) -> Result<(), Vec<FieldError>>;

    /// Builds the operator, with no state yet.
    fn build(&self) -> Result<Box<dyn StreamOperator>, ConnectorError>;
}

/// What a stream operator made of a record.
#[derive(Debug, Default)]
pub struct Emitted {
    /// Records to write to the transform's topic (its key, value and timestamp are used).
    pub records: Vec<Record>,
    /// Why the input record was not used, if so (it becomes a bad record: dead-lettered or
    /// fatal, as `errors.tolerance` says). Output may still have been made (a late record
    /// closes nothing but is reported).
    pub rejected: Option<String>,
}

impl Emitted {
    /// Nothing made: the record is a bad record, for `reason`.
    pub fn refused(reason: impl Into<String>) -> Self {
        Emitted {
            records: Vec::new(),
            rejected: Some(reason.into()),
        }
    }
}

/// A running stream transform, holding state per input partition.
pub trait StreamOperator: Send {
    /// Takes one record of `partition` (records of a partition come in offset order).
    fn process(&mut self, partition: &TopicPartition, record: &Record) -> Emitted;

    /// Everything still open in `partition`, at the end of finite input (`--once`): open
    /// windows are emitted as not final, unless the operator is told otherwise.
    fn flush(&mut self, partition: &TopicPartition) -> Vec<Record>;

    /// The state of `partition`, to checkpoint, as JSON text (written straight from the
    /// state: no intermediate tree, which for thousands of keys costs more than the work), or
    /// why it cannot be encoded.
    fn snapshot(&self, partition: &TopicPartition) -> Result<String, String>;

    /// Takes back the state of `partition` from a checkpoint.
    /// `state` is what `snapshot` gave, or empty when nothing was checkpointed.
    fn restore(&mut self, partition: &TopicPartition, state: &str) -> Result<(), String>;

    /// Drops the state of `partition` (it moved to another worker).
    fn forget(&mut self, partition: &TopicPartition);
}
