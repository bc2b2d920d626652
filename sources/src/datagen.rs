//! `type: datagen` — seeded synthetic market data (OHLCV candles or trade ticks) for offline
//! demos and benchmarks. The same seed gives the same records; a restart resumes at the stored
//! record number and regenerates the rest exactly. Records are dated `interval` apart per
//! symbol from a fixed start, and never ahead of the clock: a broker refuses records dated in
//! its future (Kafka's `log.message.timestamp.after.max.ms`), so once the calendar reaches
//! now the generator waits for each record's time, like a live feed.

use crate::pace::Pace;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_api::{
    async_trait, ConnectorError, FieldError, Payload, Record, Source, SourceBuildContext,
    SourceConfig, SourceRecord,
};

/// Generates a random walk of prices per symbol.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatagenSourceConfig {
    /// `ohlcv` (daily candles like Yahoo's CSV) or `ticks` (trades with price and size).
    #[serde(default)]
    pub shape: Shape,
    /// Symbols to generate, in turn; each is the record key.
    #[serde(default = "default_symbols")]
    pub symbols: Vec<String>,
    /// Records to generate in all; unset runs until stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Most records per second; unset generates as fast as the pipeline takes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Random seed: the same seed gives the same records.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Price of every symbol at the start.
    #[serde(default = "default_start_price")]
    pub start_price: f64,
    /// Time between two records of a symbol (`1d`, `1h`, `250ms`); default `1d` for `ohlcv`
    /// (from 2014-09-17, `Date` as `YYYY-MM-DD`; other intervals give RFC 3339 times) and
    /// `250ms` for `ticks` (from 2020-09-13). A record is never dated ahead of the clock: once
    /// the calendar reaches now, each waits for its time.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub interval: Option<std::time::Duration>,
}

/// What the generated records look like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    #[default]
    Ohlcv,
    Ticks,
}

fn default_symbols() -> Vec<String> {
    vec!["BTC-USD".into()]
}
fn default_seed() -> u64 {
    42
}
fn default_start_price() -> f64 {
    450.0
}

#[sluice_api::source("datagen")]
impl SourceConfig for DatagenSourceConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.symbols.is_empty() {
            errors.push(FieldError::new("symbols", "must name at least one symbol"));
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            errors.push(FieldError::new(
                "rate",
                "must be a positive number of records per second",
            ));
        }
        if !(self.start_price > 0.0 && self.start_price.is_finite()) {
            errors.push(FieldError::new("start_price", "must be a positive number"));
        }
        if self.interval.is_some_and(|i| i.as_millis() == 0) {
            errors.push(FieldError::new(
                "interval",
                "must be at least 1ms (records are dated in milliseconds)",
            ));
        }
        FieldError::all(errors)
    }

    async fn build(&self, ctx: SourceBuildContext) -> Result<Box<dyn Source>, ConnectorError> {
        let resume_at = ctx
            .offsets
            .get(PARTITION)
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let mut generator = Generator::new(self.clone());
        for _ in 0..resume_at {
            generator.next_value();
        }
        Ok(Box::new(DatagenSource {
            partition: PARTITION.into(),
            pace: self.rate.map(Pace::new),
            generator,
            component: ctx.component.clone(),
            told_waiting: false,
        }))
    }
}

const PARTITION: &str = "datagen";

/// Deterministic generator state.
struct Generator {
    config: DatagenSourceConfig,
    rng: SplitMix64,
    prices: Vec<f64>,
    /// Records generated so far, including those skipped on resume.
    index: u64,
}

impl Generator {
    fn new(config: DatagenSourceConfig) -> Self {
        Generator {
            rng: SplitMix64(config.seed),
            prices: vec![config.start_price; config.symbols.len()],
            index: 0,
            config,
        }
    }

    /// Milliseconds between two records of a symbol.
    fn interval_ms(&self) -> i64 {
        match (self.config.interval, self.config.shape) {
            (Some(interval), _) => i64::try_from(interval.as_millis()).unwrap_or(i64::MAX),
            (None, Shape::Ohlcv) => DAY_MS,
            (None, Shape::Ticks) => 250,
        }
    }

    /// The time of the record numbered `index`, in epoch milliseconds.
    fn time_of(&self, index: u64) -> i64 {
        let step = index / self.config.symbols.len() as u64;
        let start = match self.config.shape {
            Shape::Ohlcv => 1_410_912_000_000, // 2014-09-17
            Shape::Ticks => 1_600_000_000_000, // 2020-09-13
        };
        (step as i64)
            .saturating_mul(self.interval_ms())
            .saturating_add(start)
    }

    fn next_value(&mut self) -> (String, Value, i64) {
        let n = self.config.symbols.len();
        let s = (self.index % n as u64) as usize;
        let ts = self.time_of(self.index);
        self.index += 1;
        let open = self.prices[s];
        // Daily log-return of about 4 % standard deviation, like BTC.
        let ret = (self.rng.unit() - 0.5) * 0.14;
        let close = (open * ret.exp()).max(0.01);
        self.prices[s] = close;
        let symbol = self.config.symbols[s].clone();
        match self.config.shape {
            Shape::Ohlcv => {
                let high = open.max(close) * (1.0 + self.rng.unit() * 0.03);
                let low = open.min(close) * (1.0 - self.rng.unit() * 0.03);
                let volume = (1e7 + self.rng.unit() * 5e7) as i64;
                let date = if self.interval_ms() % DAY_MS == 0 {
                    chrono_date(ts)
                } else {
                    chrono_time(ts)
                };
                let value = json!({
                    "Symbol": symbol, "Date": date, "Open": round(open), "High": round(high),
                    "Low": round(low), "Close": round(close), "Adj Close": round(close), "Volume": volume,
                });
                (symbol, value, ts)
            }
            Shape::Ticks => {
                let size = (self.rng.unit() * 2.0 * 1e4).round() / 1e4;
                let side = if ret >= 0.0 { "buy" } else { "sell" };
                let value = json!({ "symbol": symbol, "ts": ts, "price": round(close), "size": size, "side": side });
                (symbol, value, ts)
            }
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

const DAY_MS: i64 = 86_400_000;

/// RFC 3339 time (UTC, seconds) of epoch milliseconds.
fn chrono_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// `YYYY-MM-DD` of epoch milliseconds.
fn chrono_date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// A small, portable PRNG (the same stream on every platform and version).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct DatagenSource {
    partition: std::sync::Arc<str>,
    generator: Generator,
    pace: Option<Pace>,
    component: String,
    /// Whether the log said once that records wait for their time.
    told_waiting: bool,
}

/// Longest single wait for a record's time, so that `poll` returns now and then.
const MAX_WAIT_MS: i64 = 1_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[async_trait]
impl Source for DatagenSource {
    fn progress(&self) -> Option<(u64, u64)> {
        let count = self.generator.config.count?;
        Some((self.generator.index.min(count), count))
    }

    async fn poll(&mut self, max: usize) -> Result<Option<Vec<SourceRecord>>, ConnectorError> {
        let config = &self.generator.config;
        let left = config.count.map(|c| c.saturating_sub(self.generator.index));
        if left == Some(0) {
            return Ok(None);
        }
        let mut take = left.map_or(max, |l| (l as usize).min(max));
        // Only records whose time has come: a broker refuses records dated ahead of its clock.
        let now = now_ms();
        let first = self.generator.index;
        let due = (0..take as u64)
            .take_while(|i| self.generator.time_of(first + i) <= now)
            .count();
        if due == 0 {
            let at = self.generator.time_of(first);
            if !self.told_waiting {
                self.told_waiting = true;
                tracing::info!(
                    component = %self.component,
                    record = first,
                    time = %chrono_time(at),
                    "the generated calendar reached the clock: each record now waits for its time (a shorter `interval` or a lower `count` keeps it in the past)"
                );
            }
            let wait = (at - now).clamp(1, MAX_WAIT_MS);
            tokio::time::sleep(std::time::Duration::from_millis(wait as u64)).await;
            return Ok(Some(Vec::new()));
        }
        take = due;
        if let Some(pace) = &mut self.pace {
            take = pace.wait_for(take).await;
        }
        let records = (0..take)
            .map(|_| {
                let (key, value, ts) = self.generator.next_value();
                let mut record = Record::new(value).with_key(key);
                record.timestamp = Some(ts);
                SourceRecord {
                    partition: self.partition.clone(),
                    offset: Value::from(self.generator.index),
                    position: Some(self.generator.index),
                    payload: Payload::Record(record),
                }
            })
            .collect();
        Ok(Some(records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(count: u64) -> DatagenSourceConfig {
        serde_yaml::from_str(&format!("count: {count}\nsymbols: [BTC-USD, ETH-USD]\n")).unwrap()
    }

    async fn values(source: &mut Box<dyn Source>) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(batch) = source.poll(7).await.unwrap() {
            out.extend(batch.into_iter().map(|r| match r.payload {
                Payload::Record(r) => r.value,
                other => panic!("unexpected {other:?}"),
            }));
        }
        out
    }

    #[tokio::test]
    async fn the_same_seed_gives_the_same_records_and_a_resume_continues_them() {
        let all = values(
            &mut config(20)
                .build(SourceBuildContext::default())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(all.len(), 20);
        assert_eq!(all[0]["Date"], "2014-09-17");
        assert_eq!(all[2]["Date"], "2014-09-18");
        let ctx = SourceBuildContext {
            offsets: [(PARTITION.to_string(), Value::from(12u64))].into(),
            ..Default::default()
        };
        let rest = values(&mut config(20).build(ctx).await.unwrap()).await;
        assert_eq!(rest, all[12..]);
    }

    #[tokio::test]
    async fn no_record_is_dated_ahead_of_the_clock() {
        // 2 symbols a day apart from 2014: past ~9,000 records the calendar reaches now.
        let mut source = config(20_000)
            .build(SourceBuildContext::default())
            .await
            .unwrap();
        let mut times = Vec::new();
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(3) {
            match source.poll(500).await.unwrap() {
                Some(batch) if batch.is_empty() => break,
                Some(batch) => times.extend(batch.into_iter().map(|r| match r.payload {
                    Payload::Record(r) => r.timestamp.unwrap(),
                    other => panic!("unexpected {other:?}"),
                })),
                None => break,
            }
        }
        let now = now_ms();
        assert!(times.len() > 8_000, "{} records", times.len());
        assert!(times.len() < 20_000, "{} records", times.len());
        assert!(times.iter().all(|t| *t <= now));
    }

    #[tokio::test]
    async fn an_hourly_interval_dates_records_an_hour_apart_with_their_time() {
        let config: DatagenSourceConfig = serde_yaml::from_str("count: 4\ninterval: 1h\n").unwrap();
        let all = values(&mut config.build(SourceBuildContext::default()).await.unwrap()).await;
        assert_eq!(all[0]["Date"], "2014-09-17T00:00:00Z");
        assert_eq!(all[1]["Date"], "2014-09-17T01:00:00Z");
    }

    #[test]
    fn dates_are_civil_dates() {
        assert_eq!(chrono_date(0), "1970-01-01");
        assert_eq!(chrono_date(1_410_912_000_000), "2014-09-17");
        assert_eq!(chrono_date(951_782_400_000), "2000-02-29");
    }
}
