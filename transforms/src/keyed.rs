//! The state keeping shared by stream transforms whose state is one value per key and that
//! hold nothing open at the end of input (indicators, anomaly scores, forecasts): they say
//! what one record does to its key's state, and [`Keyed`] keeps the states per input
//! partition, checkpoints and restores them. With `idle_key_ttl`, a key's state is dropped once
//! its partition's records have moved that far (event time) past the key's last record: keys
//! that come and go (tickers delisted, devices retired) do not hold memory for good. Event time,
//! not the clock, decides, so a replay from a checkpoint drops the same keys at the same records.

use crate::event_time::EventTime;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sluice_api::stream::{Emitted, StreamOperator};
use sluice_api::topic::TopicPartition;
use sluice_api::{ConnectorError, FieldError, Record};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// What a record does to the state of its key.
pub trait PerKey: Send {
    /// The state of one key: plain data, checkpointed as JSON.
    type State: Serialize + DeserializeOwned + Default + Send;

    /// Takes one record of `key` (records of a key come in partition order).
    fn process(&self, key: &str, state: &mut Self::State, record: &Record) -> Emitted;

    /// The event time of `record` in ms, what `idle_key_ttl` is measured in (default: the
    /// record's timestamp); `None` leaves the key's last time as it was.
    fn event_time(&self, record: &Record) -> Option<i64> {
        record.timestamp
    }
}

/// A [`StreamOperator`] keeping one [`PerKey::State`] per key and input partition.
pub struct Keyed<O: PerKey> {
    operator: O,
    /// Event time after a key's last record when its state is dropped; `None` keeps it.
    idle_ttl_ms: Option<i64>,
    partitions: HashMap<TopicPartition, Partition<O::State>>,
}

/// The keys of one input partition.
struct Partition<S> {
    states: BTreeMap<String, S>,
    /// With a TTL: each key's last event time, and the same pairs ordered by time (what
    /// expires first comes first).
    last: HashMap<String, i64>,
    idle: BTreeSet<(i64, String)>,
    /// Latest event time of the partition.
    latest: Option<i64>,
}

impl<S> Default for Partition<S> {
    fn default() -> Self {
        Partition {
            states: BTreeMap::new(),
            last: HashMap::new(),
            idle: BTreeSet::new(),
            latest: None,
        }
    }
}

/// A partition's checkpoint with a TTL: the states and each key's last event time.
#[derive(Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Timed<S> {
    states: BTreeMap<String, S>,
    last: BTreeMap<String, i64>,
    latest: Option<i64>,
}

/// A partition's checkpoint as read: with times (a TTL was set), or the states alone (no TTL,
/// or written before TTLs existed).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Stored<S> {
    Timed(Timed<S>),
    Plain(BTreeMap<String, S>),
}

impl<O: PerKey> Keyed<O> {
    pub fn new(operator: O, idle_key_ttl: Option<Duration>) -> Self {
        Keyed {
            operator,
            idle_ttl_ms: idle_key_ttl.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            partitions: HashMap::new(),
        }
    }
}

impl<S: Default> Partition<S> {
    /// Notes that `key` had a record at `t` and drops what has been idle longer than `ttl`:
    /// `key` itself first when it comes back after longer than that (it starts afresh), then
    /// every key the partition's time has moved `ttl` past.
    fn touch(&mut self, key: &str, t: i64, ttl: i64) {
        if self.latest.is_none() {
            // Restored from a checkpoint without times: the keys are as old as this record.
            let untimed: Vec<String> = self
                .states
                .keys()
                .filter(|k| !self.last.contains_key(*k))
                .cloned()
                .collect();
            for k in untimed {
                self.idle.insert((t, k.clone()));
                self.last.insert(k, t);
            }
        }
        if let Some(&last) = self.last.get(key) {
            if last.saturating_add(ttl) < t {
                self.states.remove(key);
            }
            self.idle.remove(&(last, key.to_string()));
        }
        let last = self.last.get(key).map_or(t, |&last| last.max(t));
        self.last.insert(key.to_string(), last);
        self.idle.insert((last, key.to_string()));
        let latest = self.latest.map_or(t, |l| l.max(t));
        self.latest = Some(latest);
        while let Some(at) = self.idle.first().map(|(at, _)| *at) {
            if at.saturating_add(ttl) >= latest {
                break;
            }
            if let Some((_, expired)) = self.idle.pop_first() {
                if expired != key {
                    self.states.remove(&expired);
                    self.last.remove(&expired);
                } else {
                    // Its own record is that old: it is used, then dropped with the next one.
                    self.idle.insert((at, expired));
                    break;
                }
            }
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
        let keys = self.partitions.entry(partition.clone()).or_default();
        if let (Some(ttl), Some(t)) = (self.idle_ttl_ms, self.operator.event_time(record)) {
            keys.touch(&key, t, ttl);
        }
        let state = keys.states.entry(key.clone()).or_default();
        self.operator.process(&key, state, record)
    }

    fn flush(&mut self, _partition: &TopicPartition) -> Vec<Record> {
        Vec::new()
    }

    fn snapshot(&self, partition: &TopicPartition) -> Result<String, String> {
        let Some(keys) = self.partitions.get(partition) else {
            return Ok(String::new());
        };
        if self.idle_ttl_ms.is_none() {
            return to_checkpoint(Some(&keys.states), 0);
        }
        #[derive(Serialize)]
        struct TimedRef<'a, S> {
            states: &'a BTreeMap<String, S>,
            last: BTreeMap<&'a str, i64>,
            latest: Option<i64>,
        }
        let timed = TimedRef {
            states: &keys.states,
            last: keys.last.iter().map(|(k, t)| (k.as_str(), *t)).collect(),
            latest: keys.latest,
        };
        to_checkpoint(Some(&timed), 0)
    }

    fn restore(&mut self, partition: &TopicPartition, state: &str) -> Result<(), String> {
        let stored: Option<Stored<O::State>> = if state.is_empty() || state == "null" {
            None
        } else {
            Some(serde_json::from_str(state).map_err(|e| format!("the checkpointed state: {e}"))?)
        };
        let mut keys = Partition::default();
        match stored {
            None => {}
            Some(Stored::Plain(states)) => keys.states = states,
            Some(Stored::Timed(timed)) => {
                keys.states = timed.states;
                keys.latest = timed.latest;
                if self.idle_ttl_ms.is_some() {
                    keys.idle = timed.last.iter().map(|(k, t)| (*t, k.clone())).collect();
                    keys.last = timed.last.into_iter().collect();
                }
            }
        }
        self.partitions.insert(partition.clone(), keys);
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

    /// Counts the records of each key: its output is the count so far.
    struct Count;

    impl PerKey for Count {
        type State = u64;

        fn process(&self, key: &str, state: &mut u64, _: &Record) -> Emitted {
            *state += 1;
            Emitted {
                records: vec![Record::new(serde_json::json!({ "key": key, "n": *state }))],
                rejected: None,
            }
        }
    }

    const DAY: i64 = 86_400_000;

    fn at(key: &str, day: i64) -> Record {
        let mut record = Record::new(Value::Null).with_key(key.as_bytes().to_vec());
        record.timestamp = Some(day * DAY);
        record
    }

    fn counts(op: &mut dyn StreamOperator, tp: &TopicPartition, records: &[Record]) -> Vec<Value> {
        records
            .iter()
            .flat_map(|r| op.process(tp, r).records)
            .map(|r| r.value)
            .collect()
    }

    /// A key that stops coming is dropped once its partition's records are `idle_key_ttl`
    /// past its last one (so a checkpoint no longer holds it), and starts afresh if it comes
    /// back; a key that keeps coming keeps its state.
    #[test]
    fn a_key_idle_longer_than_the_ttl_is_dropped_and_starts_afresh() {
        let tp: TopicPartition = ("t".into(), 0);
        let mut op = Keyed::new(Count, Some(Duration::from_secs(2 * 86_400)));
        let mut records = vec![at("gone", 0), at("gone", 1)];
        records.extend((0..10).map(|d| at("stays", d)));
        counts(&mut op, &tp, &records);
        let snapshot = op.snapshot(&tp).unwrap();
        assert!(!snapshot.contains("gone"), "{snapshot}");
        let back = counts(&mut op, &tp, &[at("gone", 11), at("stays", 11)]);
        assert_eq!(back[0]["n"], 1, "a key that came back starts afresh");
        assert_eq!(back[1]["n"], 11, "a key that kept coming keeps its state");
    }

    /// A key that comes back after longer than the TTL starts afresh even when no other
    /// key's record moved the partition in between.
    #[test]
    fn a_key_back_after_the_ttl_starts_afresh_without_other_keys() {
        let tp: TopicPartition = ("t".into(), 0);
        let mut op = Keyed::new(Count, Some(Duration::from_secs(86_400)));
        let out = counts(&mut op, &tp, &[at("a", 0), at("a", 1), at("a", 5)]);
        assert_eq!(out[1]["n"], 2);
        assert_eq!(out[2]["n"], 1);
    }

    /// Expiry follows event time, so a transform restored from a checkpoint taken anywhere
    /// in the input writes what a transform that never stopped writes; a checkpoint from
    /// before TTLs existed (the states alone) is read too, and its keys then expire.
    #[test]
    fn with_a_ttl_a_restored_transform_writes_what_one_that_never_stopped_writes() {
        let tp: TopicPartition = ("t".into(), 0);
        let ttl = Some(Duration::from_secs(3 * 86_400));
        let mut records = Vec::new();
        for day in 0..40 {
            records.push(at(&format!("k{}", day % 7), day));
            if day % 5 == 0 {
                records.push(at("rare", day));
            }
        }
        let whole = counts(&mut Keyed::new(Count, ttl), &tp, &records);
        for cut in [1, 9, 23, records.len() - 1] {
            let mut first = Keyed::new(Count, ttl);
            let mut out = counts(&mut first, &tp, &records[..cut]);
            let mut second = Keyed::new(Count, ttl);
            second.restore(&tp, &first.snapshot(&tp).unwrap()).unwrap();
            out.extend(counts(&mut second, &tp, &records[cut..]));
            assert_eq!(out, whole, "restored after {cut} records");
        }
        let mut plain = Keyed::new(Count, None);
        counts(&mut plain, &tp, &[at("old", 0)]);
        let mut timed = Keyed::new(Count, ttl);
        timed.restore(&tp, &plain.snapshot(&tp).unwrap()).unwrap();
        let out = counts(
            &mut timed,
            &tp,
            &[at("old", 1), at("new", 9), at("old", 10)],
        );
        assert_eq!(out[0]["n"], 2, "the plain checkpoint's state is used");
        assert_eq!(out[2]["n"], 1, "and its keys expire like the others");
    }

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
