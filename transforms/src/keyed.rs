//! The state keeping shared by stream transforms whose state is one value per key and that
//! hold nothing open at the end of input (indicators, anomaly scores, forecasts): they say
//! what one record does to its key's state, and [`Keyed`] keeps the states per input
//! partition, checkpoints and restores them.

use crate::time::EventTime;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sluice_core::stream::{Emitted, StreamOperator};
use sluice_core::transport::TopicPartition;
use sluice_core::{ConnectorError, FieldError, Record};
use std::collections::{BTreeMap, HashMap};

/// What a record does to the state of its key.
pub trait PerKey: Send {
    /// The state of one key: plain data, checkpointed as JSON.
    type State: Serialize + DeserializeOwned + Default + Send;

    /// Takes one record of `key` (records of a key come in partition order).
    fn process(&self, key: &str, state: &mut Self::State, record: &Record) -> Emitted;
}

/// A [`StreamOperator`] keeping one [`PerKey::State`] per key and input partition.
pub struct Keyed<O: PerKey> {
    operator: O,
    partitions: HashMap<TopicPartition, BTreeMap<String, O::State>>,
}

impl<O: PerKey> Keyed<O> {
    pub fn new(operator: O) -> Self {
        Keyed {
            operator,
            partitions: HashMap::new(),
        }
    }
}

/// A record's key as text: what stream transforms group by.
pub fn key_of(record: &Record) -> String {
    record
        .key
        .as_deref()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default()
}

impl<O: PerKey> StreamOperator for Keyed<O> {
    fn process(&mut self, partition: &TopicPartition, record: &Record) -> Emitted {
        let key = key_of(record);
        let state = self
            .partitions
            .entry(partition.clone())
            .or_default()
            .entry(key.clone())
            .or_default();
        self.operator.process(&key, state, record)
    }

    fn flush(&mut self, _partition: &TopicPartition) -> Vec<Record> {
        Vec::new()
    }

    fn snapshot(&self, partition: &TopicPartition) -> Result<String, String> {
        to_checkpoint(self.partitions.get(partition), 0)
    }

    fn restore(&mut self, partition: &TopicPartition, state: &str) -> Result<(), String> {
        let state = from_checkpoint(state)?;
        self.partitions.insert(partition.clone(), state);
        Ok(())
    }

    fn forget(&mut self, partition: &TopicPartition) {
        self.partitions.remove(partition);
    }
}

/// A config's first error as the error of `build` (`validate` reports them all).
pub fn config_error(errors: Vec<FieldError>) -> ConnectorError {
    match errors.into_iter().next() {
        Some(e) => ConnectorError::user(e.message).with_field(&e.field),
        None => ConnectorError::internal("the config was refused without a reason"),
    }
}

/// The event time of `record` and the number in its `field`, which must be positive when
/// the operator works on its log (`log`; `operation` names what it does, for the message).
pub fn timed_value(
    time: &EventTime,
    record: &Record,
    field: &str,
    log: bool,
    operation: &str,
) -> Result<(i64, f64), String> {
    let t = time.of(record)?;
    let value = number(record, field)?;
    if log && value <= 0.0 {
        return Err(format!(
            "field `{field}` is {value}: its log is undefined (set `log: false` to {operation} values ≤ 0)"
        ));
    }
    Ok((t, value))
}

/// A finite number from a field of `record`: `Err` says why not.
pub fn number(record: &Record, field: &str) -> Result<f64, String> {
    match crate::path::get(&record.value, field) {
        None | Some(Value::Null) => Err(format!("field `{field}` is missing or null")),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("field `{field}` is not a number: {v}")),
    }
}

/// A JSON number, or null for what JSON cannot hold (NaN, infinities).
pub fn json_number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// A partition's state as checkpointed: JSON text (empty when there is none), written into a
/// buffer of `size_hint` bytes (the last snapshot's size: a large state is then not grown and
/// copied as it fills). A state that cannot be encoded is an error, never an empty checkpoint.
pub fn to_checkpoint<S: Serialize>(state: Option<&S>, size_hint: usize) -> Result<String, String> {
    let Some(state) = state else {
        return Ok(String::new());
    };
    let mut text = Vec::with_capacity(size_hint);
    serde_json::to_writer(&mut text, state).map_err(|e| format!("cannot encode the state: {e}"))?;
    String::from_utf8(text).map_err(|e| format!("cannot encode the state: {e}"))
}

/// A partition's state from its checkpoint (the default when there was none).
pub fn from_checkpoint<S: DeserializeOwned + Default>(state: &str) -> Result<S, String> {
    if state.is_empty() || state == "null" {
        Ok(S::default())
    } else {
        serde_json::from_str(state).map_err(|e| format!("the checkpointed state: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint gives back the very numbers it took: a restored state computes the same
    /// bits as the state that never stopped (serde_json's default float parsing can be off by
    /// one unit in the last place).
    #[test]
    fn checkpointed_numbers_come_back_bit_for_bit() {
        let numbers: Vec<f64> = (1..2000)
            .map(|i| (i as f64 * 0.7311).ln() / 3.0 - (i as f64).sqrt() * 1e-3)
            .collect();
        // Through the checkpoint's own JSON (the text as a JSON string).
        let stored = serde_json::to_string(&to_checkpoint(Some(&numbers), 0).unwrap()).unwrap();
        let text: String = serde_json::from_str(&stored).unwrap();
        let back: Vec<f64> = from_checkpoint(&text).unwrap();
        for (a, b) in numbers.iter().zip(&back) {
            assert_eq!(a.to_bits(), b.to_bits(), "{a} came back as {b}");
        }
    }
}
