//! `window`: tumbling and hopping windows by event time, per key, with aggregates — OHLCV
//! candles from prices. A stream transform (top-level `transforms:`).
//!
//! Memory: per key, one entry per open window (its aggregates: a few numbers each, `first`/
//! `last` keep one value), plus an index entry; about 200 bytes + 50 per aggregate per open
//! window. Cost per record: one parse of its time and fields, and for each window it falls
//! in one update per aggregate (O(1)); closing windows is O(log open windows).

use crate::calendar::{Every, Weekday};
use crate::event_time::EventTime;
use crate::keyed::{config_error, from_checkpoint, json_number, to_checkpoint};
use crate::path;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_api::stream::{Emitted, StreamOperator, StreamTransformConfig};
use sluice_api::topic::TopicPartition;
use sluice_api::{ConnectorError, FieldError, Record};
use smallvec::SmallVec;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

mod aggregate;
#[cfg(test)]
mod tests;

use aggregate::*;

/// Aggregates records per key over windows of event time: tumbling (`size`), or hopping
/// (`size` and a smaller `hop`). Calendar sizes follow `timezone`: `1d` starts at midnight,
/// `1w` on Monday, `1mo` on the 1st. A window closes (and is written, `final: true`) once a
/// record of its partition is `allowed_lateness` past its end; a record for a window already
/// closed is a bad record (dead-lettered). Output: the key, `start` and `end` (RFC 3339 in
/// `timezone`), each aggregate, `final`. Memory: per key and open window about 200 bytes + 50
/// per aggregate; cost per record: one update per aggregate and window it falls in.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Window length: a number and a unit, `s`, `m` (minutes), `h`, `d`, `w` (weeks, from
    /// `week_start`) or `mo` (months), e.g. `1w`, `15m`. Days count from 1970-01-01 in
    /// `timezone`: a tumbling `7d` starts on a Thursday; use `1w` for calendar weeks.
    pub size: String,
    /// The day weeks (`w`) start on: `monday` (default, ISO 8601) … `sunday`.
    #[serde(default)]
    pub week_start: Weekday,
    /// For hopping windows: how far apart windows start (same unit as `size`, dividing it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop: Option<String>,
    /// Output field → aggregate: `count`, or `count(F)`, `sum(F)`, `min(F)`, `max(F)`,
    /// `avg(F)`, `first(F)`, `last(F)`, `stddev(F)` (sample) of field `F`. Null or missing
    /// values are skipped (`first`/`last` by event time).
    pub aggregates: indexmap::IndexMap<String, String>,
    /// Field holding the event time; default the record's timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_field: Option<String>,
    /// How `time_field` is written (`date`, `rfc3339`, `epoch_ms`…; see `timestamp_convert`).
    #[serde(default = "default_time_format")]
    pub time_format: String,
    /// Time zone of calendar windows and of `start`/`end` (default UTC).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// How long after its end a window still takes records (event time), e.g. `1h`.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "String")]
    pub allowed_lateness: Duration,
    /// How far ahead of the clock a record's time may lie (default `1d`): a record dated
    /// later is a bad record (dead-lettered), since it would move its partition's latest time
    /// for good and make every record after it late.
    #[serde(default = "one_day", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_ahead_of_clock: Duration,
    /// `close` (default): write a window once, when it closes; `updates`: also write it
    /// (`final: false`) every time a record changes it.
    #[serde(default)]
    pub emit: Emit,
    /// At the end of finite input (`--once`), write the windows still open with
    /// `final: false` (default true).
    #[serde(default = "yes")]
    pub emit_partial: bool,
}

fn one_day() -> Duration {
    Duration::from_secs(86_400)
}

fn default_time_format() -> String {
    "epoch_ms".into()
}

fn default_timezone() -> String {
    "UTC".into()
}

fn yes() -> bool {
    true
}

/// When windows are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Emit {
    #[default]
    Close,
    Updates,
}

/// One open window of one key; checkpointed as `[start, end, [aggregates]]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Open(i64, i64, Vec<Acc>);

impl Open {
    fn start(&self) -> i64 {
        self.0
    }

    fn end(&self) -> i64 {
        self.1
    }
}

/// The open windows of one key, by start: one for tumbling windows, `size / hop` at most for
/// hopping ones; kept inline in the key's entry, so that a record costs one hash lookup.
type KeyWindows = SmallVec<[Open; 1]>;

/// The state of one input partition.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct PartitionState {
    /// Latest event time seen (ms).
    watermark: Option<i64>,
    /// Key → its open windows.
    keys: hashbrown::HashMap<String, KeyWindows>,
    /// (end, key, start) of every open window, to close them in order; rebuilt on restore.
    #[serde(skip)]
    closing: BTreeSet<(i64, String, i64)>,
}

impl PartitionState {
    fn reindex(&mut self) {
        self.closing = self
            .keys
            .iter()
            .flat_map(|(key, windows)| {
                windows
                    .iter()
                    .map(move |open| (open.end(), key.clone(), open.start()))
            })
            .collect();
    }
}

/// Per aggregate, the value of its field in a record (present, not null) and that as a number.
type Inputs<'r> = SmallVec<[(Option<&'r Value>, Option<f64>); 8]>;

/// The windows (start, end, in ms) a time falls in.
type Spans = SmallVec<[(i64, i64); 4]>;

/// What the configuration says, checked.
struct Spec {
    size: Every,
    hop: Every,
    aggregates: Vec<Aggregate>,
    time: EventTime,
    lateness_ms: i64,
    /// Most milliseconds a record's time may lie ahead of the clock.
    max_ahead_ms: i64,
    emit: Emit,
    emit_partial: bool,
}

struct Window {
    spec: Spec,
    partitions: HashMap<TopicPartition, PartitionState>,
    /// The last hop slot looked up (start, end) and the windows of a time in it: consecutive
    /// records mostly fall in the same slot, and calendar arithmetic is the costly part.
    last_slot: Option<Slot>,
    /// Length of the last snapshot, to write the next one without growing its buffer.
    snapshot_len: std::sync::atomic::AtomicUsize,
}

/// A hop slot (start, end, in ms) and the windows (start, end) of any time in it.
type Slot = (i64, i64, Spans);

impl WindowConfig {
    fn operator(&self) -> Result<Window, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut check = |field: &str, r: Result<(), String>| {
            if let Err(e) = r {
                errors.push(FieldError::new(field, e));
            }
        };
        let size = Every::parse(&self.size).map(|e| e.weeks_from(self.week_start));
        check("size", size.as_ref().map(|_| ()).map_err(Clone::clone));
        let hop = match &self.hop {
            None => size.clone(),
            Some(h) => Every::parse(h).map(|e| e.weeks_from(self.week_start)),
        };
        check("hop", hop.as_ref().map(|_| ()).map_err(Clone::clone));
        if let (Ok(size), Ok(hop)) = (&size, &hop) {
            if size.unit != hop.unit || size.n % hop.n != 0 {
                check(
                    "hop",
                    Err(format!(
                        "`{}` must be in the unit of `size` and divide it",
                        self.hop.as_deref().unwrap_or_default()
                    )),
                );
            }
        }
        let mut aggregates = Vec::new();
        if self.aggregates.is_empty() {
            check("aggregates", Err("must name at least one aggregate".into()));
        }
        for (output, spec) in &self.aggregates {
            match parse_aggregate(output, spec) {
                Ok(a) => aggregates.push(a),
                Err(e) => check(&format!("aggregates.{output}"), Err(e)),
            }
        }
        let time = EventTime::new(
            self.time_field.as_deref(),
            &self.time_format,
            &self.timezone,
        );
        if let Err(e) = &time {
            errors.extend(e.iter().cloned());
        }
        match (size, hop, time) {
            (Ok(size), Ok(hop), Ok(time)) if errors.is_empty() => Ok(Window {
                spec: Spec {
                    size,
                    hop,
                    aggregates,
                    time,
                    lateness_ms: self.allowed_lateness.as_millis() as i64,
                    max_ahead_ms: i64::try_from(self.max_ahead_of_clock.as_millis())
                        .unwrap_or(i64::MAX),
                    emit: self.emit,
                    emit_partial: self.emit_partial,
                },
                partitions: HashMap::new(),
                last_slot: None,
                snapshot_len: Default::default(),
            }),
            _ => Err(errors),
        }
    }
}

#[sluice_api::stream_transform("window")]
impl StreamTransformConfig for WindowConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        self.operator().map(|_| ())
    }

    fn build(&self) -> Result<Box<dyn StreamOperator>, ConnectorError> {
        self.operator()
            .map(|w| Box::new(w) as Box<dyn StreamOperator>)
            .map_err(config_error)
    }
}

impl Spec {
    /// The fields the aggregates read, as values and numbers; an error for a value that
    /// should be a number and is not.
    fn inputs<'r>(&self, record: &'r Record) -> Result<Inputs<'r>, String> {
        self.aggregates
            .iter()
            .map(|a| {
                let Some(field) = &a.field else {
                    return Ok((None, None));
                };
                let value = path::get(&record.value, field).filter(|v| !v.is_null());
                let numeric = matches!(a.op, Op::Sum | Op::Min | Op::Max | Op::Avg | Op::Stddev);
                let number = match value {
                    Some(v) if numeric => Some(v.as_f64().ok_or_else(|| {
                        format!("field `{field}` of `{}` is not a number: {v}", a.output)
                    })?),
                    _ => None,
                };
                Ok((value, number))
            })
            .collect()
    }

    fn output(&self, key: &str, open: &Open, finished: bool) -> Record {
        let time = |ms: i64| self.time.write(ms);
        let mut value = Map::with_capacity(self.aggregates.len() + 4);
        value.insert("key".into(), Value::String(key.to_string()));
        value.insert("start".into(), time(open.start()));
        value.insert("end".into(), time(open.end()));
        for (a, acc) in self.aggregates.iter().zip(&open.2) {
            value.insert(a.output.clone(), acc.result());
        }
        value.insert("final".into(), Value::Bool(finished));
        let mut record = Record::new(Value::Object(value)).with_key(key.as_bytes().to_vec());
        record.timestamp = Some(open.start());
        record
    }
}

impl Window {
    /// Window starts (ms) and ends containing `t`.
    fn windows_of(&mut self, t: i64) -> Result<Spans, String> {
        if let Some((start, end, windows)) = &self.last_slot {
            if *start <= t && t < *end {
                return Ok(windows.clone());
            }
        }
        let at = jiff::Timestamp::from_millisecond(t).map_err(|e| e.to_string())?;
        let last = self.spec.hop.align(at, self.spec.time.zone())?;
        let slot = (
            last.timestamp().as_millisecond(),
            self.spec.hop.add(&last, 1)?.timestamp().as_millisecond(),
        );
        let mut out = Spans::new();
        for k in 0.. {
            let start = self.spec.hop.add(&last, -k)?;
            let end = self.spec.size.add(&start, 1)?;
            let (s, e) = (
                start.timestamp().as_millisecond(),
                end.timestamp().as_millisecond(),
            );
            if e <= t {
                break;
            }
            out.push((s, e));
        }
        out.reverse();
        self.last_slot = Some((slot.0, slot.1, out.clone()));
        Ok(out)
    }
}

impl StreamOperator for Window {
    fn process(&mut self, partition: &TopicPartition, record: &Record) -> Emitted {
        let mut emitted = Emitted::default();
        let prepared = self.spec.time.of(record).and_then(|t| {
            let windows = self.windows_of(t)?;
            Ok((t, self.spec.inputs(record)?, windows))
        });
        let (t, inputs, windows) = match prepared {
            Ok(p) => p,
            Err(e) => return Emitted::refused(e),
        };
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        if t > clock.saturating_add(self.spec.max_ahead_ms) {
            return Emitted::refused(format!(
                "its time {} lies more than max_ahead_of_clock ahead of the clock; taken in, it would make every record after it late",
                jiff::Timestamp::from_millisecond(t).map(|t| t.to_string()).unwrap_or_default(),
            ));
        }
        // Borrowed when the key is UTF-8, as keys are: no copy unless a window opens.
        let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default());
        if !self.partitions.contains_key(partition) {
            self.partitions
                .insert(partition.clone(), PartitionState::default());
        }
        let Some(state) = self.partitions.get_mut(partition) else {
            return emitted;
        };
        let watermark = state.watermark.unwrap_or(i64::MIN);
        let changed: Spans = windows
            .into_iter()
            .filter(|(_, end)| end.saturating_add(self.spec.lateness_ms) > watermark)
            .collect();
        if !changed.is_empty() {
            let opens = state.keys.entry_ref(key.as_ref()).or_default();
            for &(start, end) in &changed {
                let at = match opens.iter().position(|o| o.start() >= start) {
                    Some(i) if opens[i].start() == start => i,
                    found => {
                        let i = found.unwrap_or(opens.len());
                        let accs = self
                            .spec
                            .aggregates
                            .iter()
                            .map(|a| Acc::new(a.op))
                            .collect();
                        opens.insert(i, Open(start, end, accs));
                        state.closing.insert((end, key.to_string(), start));
                        i
                    }
                };
                for ((a, acc), (value, number)) in self
                    .spec
                    .aggregates
                    .iter()
                    .zip(&mut opens[at].2)
                    .zip(&inputs)
                {
                    acc.add(a.op, *value, *number, t);
                }
            }
        } else {
            emitted.rejected = Some(format!(
                "late: its time {} is more than allowed_lateness behind the latest time of its partition ({})",
                jiff::Timestamp::from_millisecond(t).map(|t| t.to_string()).unwrap_or_default(),
                jiff::Timestamp::from_millisecond(watermark).map(|t| t.to_string()).unwrap_or_default(),
            ));
        }
        if self.spec.emit == Emit::Updates {
            if let Some(opens) = state.keys.get(key.as_ref()) {
                for open in opens
                    .iter()
                    .filter(|o| changed.iter().any(|c| c.0 == o.start()))
                {
                    emitted.records.push(self.spec.output(&key, open, false));
                }
            }
        }
        let watermark = watermark.max(t);
        state.watermark = Some(watermark);
        // Close what the new watermark passed, in order of end, then key.
        while let Some(first) = state.closing.first() {
            if first.0.saturating_add(self.spec.lateness_ms) > watermark {
                break;
            }
            let Some((_, closed_key, start)) = state.closing.pop_first() else {
                break;
            };
            let Some(opens) = state.keys.get_mut(&closed_key) else {
                continue;
            };
            if let Some(i) = opens.iter().position(|o| o.start() == start) {
                let open = opens.remove(i);
                if opens.is_empty() {
                    state.keys.remove(&closed_key);
                }
                emitted
                    .records
                    .push(self.spec.output(&closed_key, &open, true));
            }
        }
        emitted
    }

    fn flush(&mut self, partition: &TopicPartition) -> Vec<Record> {
        if !self.spec.emit_partial {
            return Vec::new();
        }
        let Some(state) = self.partitions.get(partition) else {
            return Vec::new();
        };
        state
            .closing
            .iter()
            .filter_map(|(_, key, start)| {
                let open = state.keys.get(key)?.iter().find(|o| o.start() == *start)?;
                Some(self.spec.output(key, open, false))
            })
            .collect()
    }

    fn snapshot(&self, partition: &TopicPartition) -> Result<String, String> {
        use std::sync::atomic::Ordering;
        let hint = self.snapshot_len.load(Ordering::Relaxed) + 1024;
        let text = to_checkpoint(self.partitions.get(partition), hint)?;
        self.snapshot_len.store(text.len(), Ordering::Relaxed);
        Ok(text)
    }

    fn restore(&mut self, partition: &TopicPartition, state: &str) -> Result<(), String> {
        let mut state: PartitionState = from_checkpoint(state)?;
        state.reindex();
        self.partitions.insert(partition.clone(), state);
        Ok(())
    }

    fn forget(&mut self, partition: &TopicPartition) {
        self.partitions.remove(partition);
    }
}
