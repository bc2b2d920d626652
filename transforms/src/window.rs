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

/// One aggregate: what it computes, over which field.
#[derive(Debug, Clone, PartialEq)]
struct Aggregate {
    output: String,
    op: Op,
    field: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    First,
    Last,
    Stddev,
}

fn parse_aggregate(output: &str, spec: &str) -> Result<Aggregate, String> {
    let spec = spec.trim();
    let (name, field) = match spec.split_once('(') {
        Some((name, rest)) => {
            let field = rest
                .strip_suffix(')')
                .ok_or_else(|| format!("`{spec}`: missing `)`"))?
                .trim();
            (name.trim(), (!field.is_empty()).then(|| field.to_string()))
        }
        None => (spec, None),
    };
    let op = match name {
        "count" => Op::Count,
        "sum" => Op::Sum,
        "min" => Op::Min,
        "max" => Op::Max,
        "avg" => Op::Avg,
        "first" => Op::First,
        "last" => Op::Last,
        "stddev" => Op::Stddev,
        other => {
            return Err(format!(
            "`{other}` is not an aggregate: use count, sum, min, max, avg, first, last or stddev"
        ))
        }
    };
    if op != Op::Count && field.is_none() {
        return Err(format!("`{spec}` needs a field, e.g. `{name}(Close)`"));
    }
    Ok(Aggregate {
        output: output.to_string(),
        op,
        field,
    })
}

/// The running value of one aggregate in one window. Checkpointed compactly (a one-letter tag
/// and an array): the state of every open window is written at each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
enum Acc {
    /// Records counted.
    #[serde(rename = "c")]
    Count(u64),
    /// Exact whole-number sum, float sum, whether the float sum is the one, values summed.
    #[serde(rename = "s")]
    Sum(i64, f64, bool, u64),
    /// Least or greatest value so far, and it as a number.
    #[serde(rename = "x")]
    Extreme(Option<Value>, f64),
    /// Sum and count of the values.
    #[serde(rename = "a")]
    Avg(f64, u64),
    /// First or last value by event time, and that time.
    #[serde(rename = "e")]
    Edge(Option<Value>, i64),
    /// Welford's count, mean and sum of squared deviations.
    #[serde(rename = "d")]
    Stddev(u64, f64, f64),
}

impl Acc {
    fn new(op: Op) -> Self {
        match op {
            Op::Count => Acc::Count(0),
            Op::Sum => Acc::Sum(0, 0.0, false, 0),
            Op::Min | Op::Max => Acc::Extreme(None, 0.0),
            Op::Avg => Acc::Avg(0.0, 0),
            Op::First | Op::Last => Acc::Edge(None, 0),
            Op::Stddev => Acc::Stddev(0, 0.0, 0.0),
        }
    }

    /// Adds `value` (present, not null) of a record at `time`.
    fn add(&mut self, op: Op, value: Option<&Value>, number: Option<f64>, time: i64) {
        match self {
            Acc::Count(n) => {
                if value.is_some() || op == Op::Count {
                    *n += 1
                }
            }
            Acc::Sum(int, float, floats, n) => {
                if let Some(v) = value {
                    // Whole numbers add exactly until one is not whole or the sum overflows.
                    match v.as_i64().and_then(|i| int.checked_add(i)) {
                        Some(sum) if !*floats => *int = sum,
                        _ => *floats = true,
                    }
                    *float += number.unwrap_or(0.0);
                    *n += 1;
                }
            }
            Acc::Extreme(best, at) => {
                if let (Some(v), Some(x)) = (value, number) {
                    let better =
                        best.is_none() || (op == Op::Min && x < *at) || (op == Op::Max && x > *at);
                    if better {
                        *best = Some(v.clone());
                        *at = x;
                    }
                }
            }
            Acc::Avg(sum, n) => {
                if let Some(x) = number {
                    *sum += x;
                    *n += 1;
                }
            }
            Acc::Edge(kept, kept_time) => {
                if let Some(v) = value {
                    // Ties keep arrival order: the first stays first, the last one wins last.
                    let take = kept.is_none()
                        || (op == Op::First && time < *kept_time)
                        || (op == Op::Last && time >= *kept_time);
                    if take {
                        *kept = Some(v.clone());
                        *kept_time = time;
                    }
                }
            }
            Acc::Stddev(n, mean, m2) => {
                if let Some(x) = number {
                    *n += 1;
                    let delta = x - *mean;
                    *mean += delta / *n as f64;
                    *m2 += delta * (x - *mean);
                }
            }
        }
    }

    fn result(&self) -> Value {
        let float = json_number;
        match self {
            Acc::Count(n) => Value::from(*n),
            Acc::Sum(.., 0) => Value::Null,
            Acc::Sum(int, _, false, _) => Value::from(*int),
            Acc::Sum(_, f, true, _) => float(*f),
            Acc::Extreme(best, _) => best.clone().unwrap_or(Value::Null),
            Acc::Avg(_, 0) => Value::Null,
            Acc::Avg(sum, n) => float(sum / *n as f64),
            Acc::Edge(value, _) => value.clone().unwrap_or(Value::Null),
            Acc::Stddev(n, _, m2) if *n >= 2 => float((m2 / (*n as f64 - 1.0)).sqrt()),
            Acc::Stddev(..) => Value::Null,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn window(yaml: &str) -> Box<dyn StreamOperator> {
        let config: WindowConfig = serde_yaml::from_str(yaml).unwrap();
        config.build().unwrap()
    }

    fn bar(date: &str, open: f64, high: f64, low: f64, close: f64, volume: i64) -> Record {
        let mut r = Record::new(
            json!({"Date": date, "Open": open, "High": high, "Low": low, "Close": close, "Volume": volume}),
        )
        .with_key("BTC-USD");
        r.timestamp = date
            .parse::<jiff::civil::Date>()
            .ok()
            .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
            .map(|z| z.timestamp().as_millisecond());
        r
    }

    const CANDLES: &str = "size: 1w\naggregates: { open: first(Open), high: max(High), low: min(Low), close: last(Close), volume: sum(Volume), days: count }";

    fn tp() -> TopicPartition {
        ("bitcoin".into(), 0)
    }

    fn run(op: &mut dyn StreamOperator, records: Vec<Record>) -> Vec<Value> {
        let mut out = Vec::new();
        for r in records {
            let e = op.process(&tp(), &r);
            assert!(e.rejected.is_none(), "{:?}", e.rejected);
            out.extend(e.records.into_iter().map(|r| r.value));
        }
        out
    }

    #[test]
    fn weekly_candles_start_on_monday_and_close_when_the_next_week_starts() {
        let mut op = window(CANDLES);
        // Wed 2020-03-11 … Sun 2020-03-15, then Mon 2020-03-16 closes the week.
        let out = run(
            &mut *op,
            vec![
                bar("2020-03-11", 7910.1, 7950.8, 7642.8, 7911.4, 35_807_000_000),
                bar("2020-03-12", 7913.6, 7929.1, 4860.4, 4970.8, 53_980_000_000),
                bar("2020-03-13", 5017.8, 5838.1, 4106.9, 5563.7, 74_156_772_000),
                bar("2020-03-15", 5201.1, 5836.6, 5169.3, 5392.3, 33_997_889_000),
                bar("2020-03-16", 5385.2, 5385.2, 4575.4, 5014.5, 45_368_026_000),
            ],
        );
        assert_eq!(
            out,
            [
                json!({"key": "BTC-USD", "start": "2020-03-09T00:00:00Z", "end": "2020-03-16T00:00:00Z",
                "open": 7910.1, "high": 7950.8, "low": 4106.9, "close": 5392.3,
                "volume": 197_941_661_000_i64, "days": 4, "final": true})
            ]
        );
        // The open week is written as not final at the end of input.
        let partial = op.flush(&tp());
        assert_eq!(partial.len(), 1);
        assert_eq!(partial[0].value["start"], "2020-03-16T00:00:00Z");
        assert_eq!(partial[0].value["final"], false);
        assert_eq!(partial[0].value["days"], 1);
    }

    /// `week_start: sunday` makes Sunday-to-Saturday weeks (the US calendar); the aggregates
    /// come out in the order they are written.
    #[test]
    fn weeks_may_start_on_sunday() {
        let mut op = window(&format!("{CANDLES}\nweek_start: sunday"));
        // Wed 2020-03-11 … Sat 2020-03-14, then Sun 2020-03-15 closes the week.
        let out = run(
            &mut *op,
            vec![
                bar("2020-03-11", 1.0, 2.0, 0.5, 1.5, 10),
                bar("2020-03-14", 1.5, 3.0, 1.0, 2.5, 20),
                bar("2020-03-15", 2.5, 2.5, 2.0, 2.2, 30),
            ],
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["start"], "2020-03-08T00:00:00Z");
        assert_eq!(out[0]["end"], "2020-03-15T00:00:00Z");
        assert_eq!(out[0]["days"], 2);
        let fields: Vec<&String> = out[0].as_object().unwrap().keys().collect();
        assert_eq!(
            fields,
            ["key", "start", "end", "open", "high", "low", "close", "volume", "days", "final"]
        );
    }

    /// One record dated far in the future must not move the watermark: it is refused, and
    /// the records after it are not late.
    #[test]
    fn a_record_dated_far_ahead_of_the_clock_is_refused_and_moves_nothing() {
        let mut op = window(CANDLES);
        run(&mut *op, vec![bar("2020-03-16", 1.0, 1.0, 1.0, 1.0, 1)]);
        let e = op.process(&tp(), &bar("2099-01-01", 1.0, 1.0, 1.0, 1.0, 1));
        assert!(
            e.rejected
                .as_deref()
                .unwrap_or_default()
                .contains("max_ahead_of_clock"),
            "{:?}",
            e.rejected
        );
        let e = op.process(&tp(), &bar("2020-03-17", 1.0, 1.0, 1.0, 1.0, 1));
        assert_eq!(e.rejected, None);
    }

    #[test]
    fn a_late_record_is_rejected_unless_within_the_allowed_lateness() {
        let mut op = window(CANDLES);
        run(
            &mut *op,
            vec![
                bar("2020-03-16", 1.0, 1.0, 1.0, 1.0, 1),
                bar("2020-03-24", 1.0, 1.0, 1.0, 1.0, 1),
            ],
        );
        let e = op.process(&tp(), &bar("2020-03-18", 1.0, 1.0, 1.0, 1.0, 1));
        assert!(e.rejected.unwrap().starts_with("late:"));
        let mut lenient = window(&format!("{CANDLES}\nallowed_lateness: 3days"));
        let out = run(
            &mut *lenient,
            vec![
                bar("2020-03-16", 1.0, 2.0, 1.0, 1.0, 1),
                bar("2020-03-24", 1.0, 1.0, 1.0, 1.0, 1),
                bar("2020-03-18", 1.0, 5.0, 1.0, 3.0, 1),
                bar("2020-03-26", 1.0, 1.0, 1.0, 1.0, 1),
            ],
        );
        assert_eq!(out.len(), 1, "the week closes 3 days after its end");
        assert_eq!(out[0]["high"], 5.0);
        assert_eq!(out[0]["close"], 3.0, "last by event time");
    }

    #[test]
    fn hopping_windows_hold_a_record_in_each_window_it_falls_in() {
        let mut op = window("size: 3d\nhop: 1d\naggregates: { n: count, s: sum(Close), sd: stddev(Close), avg: avg(Close) }");
        let out = run(
            &mut *op,
            (1..=5)
                .map(|d| bar(&format!("2020-03-0{d}"), 0.0, 0.0, 0.0, d as f64, 1))
                .collect(),
        );
        let starts: Vec<&str> = out.iter().map(|v| v["start"].as_str().unwrap()).collect();
        assert_eq!(
            starts,
            [
                "2020-02-28T00:00:00Z",
                "2020-02-29T00:00:00Z",
                "2020-03-01T00:00:00Z",
                "2020-03-02T00:00:00Z"
            ]
        );
        assert_eq!(out[2]["n"], 3);
        assert_eq!(out[2]["s"], 6.0);
        assert_eq!(out[2]["avg"], 2.0);
        assert_eq!(out[2]["sd"], 1.0);
    }

    #[test]
    fn calendar_windows_follow_the_time_zone() {
        let mut op = window("size: 1d\ntimezone: Europe/Paris\naggregates: { n: count }\ntime_field: at\ntime_format: rfc3339");
        let at = |t: &str| {
            let mut r = Record::new(json!({"at": t})).with_key("k");
            r.timestamp = None;
            r
        };
        let out = run(
            &mut *op,
            vec![
                at("2020-03-11T22:30:00Z"),
                at("2020-03-11T23:30:00Z"),
                at("2020-03-12T23:30:00Z"),
            ],
        );
        assert_eq!(out[0]["start"], "2020-03-11T00:00:00+01:00");
        assert_eq!(out[0]["n"], 1, "23:30 UTC is the next day in Paris");
        assert_eq!(out[1]["start"], "2020-03-12T00:00:00+01:00");
        let mut monthly = window("size: 1mo\naggregates: { n: count }");
        let out = run(
            &mut *monthly,
            vec![
                bar("2020-01-31", 0.0, 0.0, 0.0, 0.0, 0),
                bar("2020-02-29", 0.0, 0.0, 0.0, 0.0, 0),
                bar("2020-03-01", 0.0, 0.0, 0.0, 0.0, 0),
            ],
        );
        assert_eq!(out[0]["end"], "2020-02-01T00:00:00Z");
        assert_eq!(out[1]["start"], "2020-02-01T00:00:00Z");
    }

    #[test]
    fn state_round_trips_through_a_checkpoint() {
        let mut op = window(CANDLES);
        run(
            &mut *op,
            vec![
                bar("2020-03-11", 1.0, 3.0, 0.5, 2.0, 10),
                bar("2020-03-12", 2.0, 4.0, 1.0, 3.0, 20),
            ],
        );
        let saved = op.snapshot(&tp()).unwrap();
        let mut restored = window(CANDLES);
        restored.restore(&tp(), &saved).unwrap();
        let out = run(
            &mut *restored,
            vec![bar("2020-03-16", 0.0, 0.0, 0.0, 0.0, 0)],
        );
        assert_eq!(out[0]["open"], 1.0);
        assert_eq!(out[0]["high"], 4.0);
        assert_eq!(out[0]["volume"], 30);
    }

    #[test]
    fn null_values_are_skipped_and_bad_configs_named() {
        let mut op = window(CANDLES);
        let mut gap = bar("2020-03-12", 0.0, 0.0, 0.0, 0.0, 0);
        gap.value = json!({"Date": "2020-03-12", "Open": null, "High": null, "Low": null, "Close": null, "Volume": null});
        let out = run(
            &mut *op,
            vec![
                bar("2020-03-11", 1.0, 3.0, 0.5, 2.0, 10),
                gap,
                bar("2020-03-16", 0.0, 0.0, 0.0, 0.0, 0),
            ],
        );
        assert_eq!(out[0]["close"], 2.0);
        assert_eq!(out[0]["volume"], 10);
        let mut r = bar("2020-03-17", 0.0, 0.0, 0.0, 0.0, 0);
        r.value["High"] = json!("high");
        let text = op.process(&tp(), &r);
        assert_eq!(
            text.rejected.unwrap(),
            "field `High` of `high` is not a number: \"high\""
        );
        for (yaml, field) in [
            ("size: 7x\naggregates: { n: count }", "size"),
            ("size: 7m\naggregates: { n: count }", "size"),
            ("size: 1w\nhop: 2d\naggregates: { n: count }", "hop"),
            ("size: 1d\naggregates: { n: median(Close) }", "aggregates.n"),
            ("size: 1d\naggregates: { n: sum }", "aggregates.n"),
        ] {
            let c: WindowConfig = serde_yaml::from_str(yaml).unwrap();
            assert_eq!(c.validate().unwrap_err()[0].field, field, "{yaml}");
        }
    }
}
