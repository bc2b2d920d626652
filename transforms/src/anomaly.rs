//! `anomaly`: an online anomaly score per key on a numeric field, from the past only, with a
//! severity on the 0–100 scale of Kibana's anomaly table. A stream transform.
//!
//! How a record is scored (explainable by hand):
//! 1. `y` is the value (its natural log when `log: true`, the default, which suits prices:
//!    moves are then relative).
//! 2. `typical` is an exponentially smoothed level of the past values of the key:
//!    `level ← level + alpha·(y − level)`, updated after scoring. The residual is
//!    `y − level`.
//! 3. The score is the residual divided by the sample standard deviation of the key's last
//!    `window` residuals (before this one): how many usual deviations the value is away from
//!    what was typical.
//! 4. The severity maps the score's percentile through Elastic's knots: 70→1, 90→1.5, 95→3,
//!    97→20, 99→50, 99.9→90, 100→100, linear in between (0→0 below 70). With
//!    `normalize: history` (the default, as Kibana renormalises against the history) the
//!    percentile is the rank of |score| among the key's past scores (kept in a histogram of
//!    bins 0.05 wide up to 10), so only the key's rarest moves score high; before 100 past
//!    scores, and with `normalize: normal`, it is the two-sided normal percentile
//!    `erf(|z|/√2)`, which grows with the score alone.
//!
//! Memory per key: the level and the last `window` residuals (8 bytes each; 180 by default,
//! about 1.5 KiB as a checkpoint of JSON numbers, ~3.5 KiB). Cost per record: O(window) for
//! the standard deviation (a few hundred additions), no allocation once the window is full.

use crate::event_time::EventTime;
use crate::keyed::{config_error, json_number, timed_value, Keyed, PerKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_api::stream::{Emitted, StreamOperator, StreamTransformConfig};
use sluice_api::{ConnectorError, FieldError, Record};
use std::collections::VecDeque;

/// Scores every record of a key against the key's past: the residual of exponential smoothing
/// (on the log of the value by default) standardised over a trailing window of residuals, and
/// a severity 0–100 as in Kibana's anomaly table. Writes a record per scored input whose
/// severity is at least `min_severity`: `key`, `time` (RFC 3339), `field`, `actual`, `typical`,
/// `score` (signed: above or below typical), `severity`, `direction` (`up`/`down`), plus the
/// input fields named in `include`. Memory: per key the level and `window` residuals (8 bytes
/// each, 1.5 KiB by default); cost per record: O(`window`) additions.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// The numeric field scored (e.g. `Close`). A record without it is a bad record.
    pub field: String,
    /// Score the natural log of the value (default true): right for prices and volumes, which
    /// move by ratios; a value ≤ 0 is then a bad record.
    #[serde(default = "yes")]
    pub log: bool,
    /// Smoothing factor of the typical level, in (0, 1]: small follows slowly (a jump stays
    /// anomalous for days), 1 compares with the previous value only. Default 0.1.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// How many past residuals the standard deviation is taken over (default 180).
    #[serde(default = "default_window")]
    pub window: usize,
    /// Records of a key needed before it is scored (default 30; at least 2).
    #[serde(default = "default_warmup")]
    pub warmup: usize,
    /// Only records with at least this severity are written (default 1: what Kibana's table
    /// lists; 0 writes every scored record).
    #[serde(default = "default_min_severity")]
    pub min_severity: f64,
    /// How a score becomes a severity: `history` (default: by its rank among the key's past
    /// scores, as Kibana does, so that few records score high) or `normal` (by the normal
    /// law's percentile of the score alone: heavy-tailed series such as prices then give many
    /// days near 100).
    #[serde(default)]
    pub normalize: Normalize,
    /// Input fields copied into the output (e.g. `[Date, Volume]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Field holding the event time; default the record's timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_field: Option<String>,
    /// How `time_field` is written (`date`, `rfc3339`, `epoch_ms`…; see `timestamp_convert`).
    #[serde(default = "default_time_format")]
    pub time_format: String,
    /// Time zone of `time` in the output and of times without one (default UTC).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Drop a key's state once its partition's records are this far past the key's last
    /// record in event time (e.g. `30d`): for keys that stop coming (delisted tickers), whose
    /// state would otherwise be held for good. A key that comes back later starts afresh.
    /// Default: kept for good.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    #[schemars(with = "Option<String>")]
    pub idle_key_ttl: Option<std::time::Duration>,
}

fn yes() -> bool {
    true
}
fn default_alpha() -> f64 {
    0.1
}
fn default_window() -> usize {
    180
}
fn default_warmup() -> usize {
    30
}
fn default_min_severity() -> f64 {
    1.0
}
fn default_time_format() -> String {
    "epoch_ms".into()
}
fn default_timezone() -> String {
    "UTC".into()
}

/// How a score's percentile is found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// Its rank among the key's past scores.
    #[default]
    History,
    /// The normal law's two-sided percentile.
    Normal,
}

/// Past scores a key needs before its severities come from their ranks.
const RANKED_AFTER: u64 = 100;

/// Width of a bin of the histogram of past |scores|.
const BIN: f64 = 0.05;

/// Bins below the overflow bin (|score| up to 10).
const BINS: usize = 200;

/// The past |scores| of a key, binned.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ScoreHistory {
    /// Counts per bin; the last one holds every |score| ≥ `BINS × BIN`.
    bins: Vec<u32>,
    count: u64,
}

impl ScoreHistory {
    fn bin(z: f64) -> usize {
        ((z / BIN) as usize).min(BINS)
    }

    fn add(&mut self, z: f64) {
        if self.bins.is_empty() {
            self.bins = vec![0; BINS + 1];
        }
        self.bins[Self::bin(z)] += 1;
        self.count += 1;
    }

    /// The share of past scores above `z` (0–1), interpolated inside its bin.
    fn tail(&self, z: f64) -> f64 {
        let b = Self::bin(z);
        let below: u64 = self.bins[..b].iter().map(|&n| u64::from(n)).sum();
        let within = f64::from(self.bins[b]);
        let inside = if b < BINS {
            (z - b as f64 * BIN) / BIN
        } else {
            0.5
        };
        let at_or_below = below as f64 + within * inside.clamp(0.0, 1.0);
        (1.0 - at_or_below / self.count as f64).clamp(0.0, 1.0)
    }
}

/// Percentile → severity: Elastic's normalisation knots.
const KNOTS: [(f64, f64); 8] = [
    (0.0, 0.0),
    (70.0, 1.0),
    (90.0, 1.5),
    (95.0, 3.0),
    (97.0, 20.0),
    (99.0, 50.0),
    (99.9, 90.0),
    (100.0, 100.0),
];

/// The severity of a score: its two-sided normal percentile through [`KNOTS`].
pub fn severity(score: f64) -> f64 {
    let z = score.abs();
    if z.is_nan() {
        return 0.0;
    }
    // The tail beyond |z|, exact far out (erfc does not round to 0 as 1 − erf would).
    severity_of_tail(libm::erfc(z / std::f64::consts::SQRT_2))
}

/// The severity of a percentile given as its tail, the share above it (0–1).
fn severity_of_tail(tail: f64) -> f64 {
    let percentile = 100.0 * (1.0 - tail);
    for pair in KNOTS.windows(2) {
        let ((p0, s0), (p1, s1)) = (pair[0], pair[1]);
        if percentile <= p1 {
            // Near 100 the percentile is 100 − 100·tail: interpolate on the tail itself.
            let from_top = (100.0 - p0) - 100.0 * tail;
            return s0 + (s1 - s0) * (from_top / (p1 - p0)).clamp(0.0, 1.0);
        }
    }
    100.0
}

/// The state of one key.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KeyState {
    /// Smoothed level of the past values (log scale when `log`).
    level: Option<f64>,
    /// The last `window` residuals, oldest first.
    residuals: VecDeque<f64>,
    /// With `normalize: history`: the key's past |scores|.
    #[serde(default, skip_serializing_if = "ScoreHistory::is_empty")]
    scores: ScoreHistory,
}

impl ScoreHistory {
    fn is_empty(&self) -> bool {
        self.count == 0
    }
}

struct Anomaly {
    config: AnomalyConfig,
    time: EventTime,
}

impl AnomalyConfig {
    fn operator(&self) -> Result<Anomaly, Vec<FieldError>> {
        let mut errors = Vec::new();
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            errors.push(FieldError::new("alpha", "must be in (0, 1]"));
        }
        if self.window < 2 {
            errors.push(FieldError::new("window", "must be at least 2"));
        }
        if self.warmup < 2 {
            errors.push(FieldError::new("warmup", "must be at least 2"));
        }
        if !(0.0..=100.0).contains(&self.min_severity) {
            errors.push(FieldError::new("min_severity", "must be in 0–100"));
        }
        let time = EventTime::new(
            self.time_field.as_deref(),
            &self.time_format,
            &self.timezone,
        );
        match time {
            Ok(time) if errors.is_empty() => Ok(Anomaly {
                config: self.clone(),
                time,
            }),
            Ok(_) => Err(errors),
            Err(e) => Err(errors.into_iter().chain(e).collect()),
        }
    }
}

#[sluice_api::stream_transform("anomaly")]
impl StreamTransformConfig for AnomalyConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        self.operator().map(|_| ())
    }

    fn build(&self) -> Result<Box<dyn StreamOperator>, ConnectorError> {
        self.operator()
            .map(|a| Box::new(Keyed::new(a, self.idle_key_ttl)) as Box<dyn StreamOperator>)
            .map_err(config_error)
    }
}

/// Sample standard deviation.
fn std_dev(values: &VecDeque<f64>) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
}

impl PerKey for Anomaly {
    type State = KeyState;

    fn event_time(&self, record: &Record) -> Option<i64> {
        self.time.of(record).ok()
    }

    fn process(&self, key: &str, state: &mut KeyState, record: &Record) -> Emitted {
        let c = &self.config;
        let (time, actual) = match timed_value(&self.time, record, &c.field, c.log, "score") {
            Ok(read) => read,
            Err(e) => return Emitted::refused(e),
        };
        let y = if c.log { actual.ln() } else { actual };
        let Some(level) = state.level else {
            state.level = Some(y);
            return Emitted::default();
        };
        let residual = y - level;
        let scored = state.residuals.len() >= c.warmup.saturating_sub(1).max(2);
        let score = scored.then(|| {
            let sd = std_dev(&state.residuals);
            if sd > 0.0 {
                residual / sd
            } else if residual == 0.0 {
                0.0
            } else {
                f64::INFINITY.copysign(residual)
            }
        });
        state.residuals.push_back(residual);
        while state.residuals.len() > c.window {
            state.residuals.pop_front();
        }
        state.level = Some(level + c.alpha * residual);
        let mut emitted = Emitted::default();
        let Some(score) = score else {
            return emitted;
        };
        let severity = match c.normalize {
            Normalize::History if state.scores.count >= RANKED_AFTER && !score.is_nan() => {
                severity_of_tail(state.scores.tail(score.abs()))
            }
            _ => severity(score),
        };
        if c.normalize == Normalize::History && !score.is_nan() {
            state.scores.add(score.abs());
        }
        if severity < c.min_severity {
            return emitted;
        }
        let typical = if c.log { level.exp() } else { level };
        let mut value = Map::new();
        value.insert("key".into(), Value::String(key.to_string()));
        value.insert("time".into(), self.time.write(time));
        value.insert("field".into(), Value::String(c.field.clone()));
        value.insert("actual".into(), json_number(actual));
        value.insert("typical".into(), json_number(typical));
        value.insert("score".into(), json_number(score));
        value.insert("severity".into(), json_number(severity));
        value.insert(
            "direction".into(),
            Value::String(if residual >= 0.0 { "up" } else { "down" }.into()),
        );
        for field in &c.include {
            if let Some(v) = crate::path::get(&record.value, field) {
                value.insert(field.clone(), v.clone());
            }
        }
        let mut out = Record::new(Value::Object(value));
        out.key.clone_from(&record.key);
        out.timestamp = Some(time);
        emitted.records.push(out);
        emitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_api::topic::TopicPartition;

    fn tp() -> TopicPartition {
        ("prices".into(), 0)
    }

    fn build(yaml: &str) -> Box<dyn StreamOperator> {
        let config: AnomalyConfig = serde_yaml::from_str(yaml).unwrap();
        config.build().unwrap()
    }

    fn price(day: i64, close: f64) -> Record {
        let mut r = Record::new(json!({ "Close": close })).with_key("BTC");
        r.timestamp = Some(day * 86_400_000);
        r
    }

    /// The severities of every scored day of the real BTC-USD history (tests/fixtures).
    fn btc_severities(normalize: &str) -> Vec<f64> {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/BTC-USD.csv"
        ))
        .unwrap();
        let mut op = build(&format!(
            "field: Close\nmin_severity: 0\nnormalize: {normalize}"
        ));
        let mut out = Vec::new();
        for (day, line) in text.lines().skip(1).enumerate() {
            let Some(close) = line.split(',').nth(4).and_then(|c| c.parse::<f64>().ok()) else {
                continue;
            };
            let emitted = op.process(&tp(), &price(day as i64, close));
            out.extend(
                emitted
                    .records
                    .iter()
                    .map(|r| r.value["severity"].as_f64().unwrap()),
            );
        }
        out
    }

    /// On the BTC history, the normal law makes 94 days of 2,500 severe (≥ 75) and a dozen
    /// tie near 100; ranked against each key's history, as Kibana does (the default), only
    /// the rarest moves are: about 1 % of days reach 75, and the top is not a tie.
    #[test]
    fn ranked_severities_leave_few_days_at_the_top_of_the_table() {
        let normal = btc_severities("normal");
        let ranked = btc_severities("history");
        assert_eq!(normal.len(), ranked.len());
        let severe = |s: &[f64]| s.iter().filter(|&&x| x >= 75.0).count();
        let near_top = |s: &[f64]| s.iter().filter(|&&x| x >= 99.0).count();
        eprintln!(
            "{} days scored; ≥ 75: normal {}, history {}; ≥ 99: normal {}, history {}",
            normal.len(),
            severe(&normal),
            severe(&ranked),
            near_top(&normal),
            near_top(&ranked)
        );
        assert!(severe(&normal) >= 80, "{}", severe(&normal));
        assert!(severe(&ranked) <= normal.len() / 100, "{}", severe(&ranked));
        assert!(near_top(&ranked) <= 10, "{}", near_top(&ranked));
        assert!(severe(&ranked) >= 1, "the rarest moves still stand out");
    }

    #[test]
    fn severity_follows_elastics_knots_and_grows_with_the_score() {
        // Two-sided normal percentiles: 1.2816 → 80, 1.96 → 95, 2.5758 → 99, 3.2905 → 99.9.
        assert!(
            (severity(1.2816) - 1.25).abs() < 0.01,
            "{}",
            severity(1.2816)
        );
        assert!((severity(1.96) - 3.0).abs() < 0.01);
        assert!((severity(-2.5758) - 50.0).abs() < 0.05);
        assert!((severity(3.2905) - 90.0).abs() < 0.05);
        assert_eq!(severity(0.0), 0.0);
        assert_eq!(severity(f64::INFINITY), 100.0);
        let mut last = 0.0;
        for i in 0..2000 {
            let s = severity(i as f64 / 100.0);
            assert!(
                (0.0..=100.0).contains(&s) && s >= last,
                "{i}: {s} after {last}"
            );
            last = s;
        }
        assert!(severity(6.0) > 99.9 && severity(6.0) < 100.0);
    }

    #[test]
    fn a_jump_after_a_quiet_series_is_scored_against_the_past_only() {
        let mut op = build("field: Close\nwarmup: 5\nwindow: 10\nmin_severity: 0");
        // A series alternating ±1 % around 100, then a 20 % jump.
        let mut out = Vec::new();
        for day in 0..20 {
            let close = if day % 2 == 0 { 100.0 } else { 101.0 };
            out.extend(op.process(&tp(), &price(day, close)).records);
        }
        // First record sets the level; scoring starts once 4 residuals are known.
        assert_eq!(out.len(), 20 - 5);
        let quiet = out.iter().map(|r| r.value["severity"].as_f64().unwrap());
        assert!(
            quiet.clone().all(|s| s < 3.0),
            "{:?}",
            quiet.collect::<Vec<_>>()
        );
        let jump = op.process(&tp(), &price(20, 120.0)).records;
        let v = &jump[0].value;
        assert_eq!(v["key"], "BTC");
        assert_eq!(v["time"], "1970-01-21T00:00:00Z");
        assert_eq!(v["actual"], 120.0);
        assert_eq!(v["direction"], "up");
        let typical = v["typical"].as_f64().unwrap();
        assert!(typical > 100.0 && typical < 101.0, "{typical}");
        assert!(v["score"].as_f64().unwrap() > 10.0);
        assert!(v["severity"].as_f64().unwrap() > 99.0);
    }

    #[test]
    fn state_survives_a_checkpoint_and_bad_values_are_refused() {
        let yaml = "field: Close\nwarmup: 3\nmin_severity: 0";
        let mut a = build(yaml);
        let mut b = build(yaml);
        for day in 0..10 {
            a.process(&tp(), &price(day, 100.0 + (day % 3) as f64));
        }
        b.restore(&tp(), &a.snapshot(&tp()).unwrap()).unwrap();
        let (x, y) = (
            a.process(&tp(), &price(10, 107.0)).records,
            b.process(&tp(), &price(10, 107.0)).records,
        );
        assert_eq!(x[0].value, y[0].value);
        let bad = a.process(&tp(), &price(11, -1.0));
        assert!(bad.rejected.unwrap().contains("log is undefined"));
        let missing = a.process(&tp(), &Record::new(json!({"Open": 1})).with_key("BTC"));
        assert!(missing.rejected.is_some());
    }
}
