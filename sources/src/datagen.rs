//! `type: datagen` — seeded synthetic market data (OHLCV candles or trade ticks) for offline
//! demos and benchmarks. The same seed gives the same records; a restart resumes at the stored
//! record number and regenerates the rest exactly.

use crate::pace::Pace;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_core::{
    async_trait, ConnectorError, FieldError, Payload, Record, Source, SourceBuildContext,
    SourceConfig, SourceRecord,
};

sluice_core::register_plugin!(Source, "datagen", DatagenSourceConfig);

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

#[async_trait]
#[typetag::serde(name = "datagen")]
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
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
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

    fn next_value(&mut self) -> (String, Value, i64) {
        let n = self.config.symbols.len();
        let s = (self.index % n as u64) as usize;
        let step = self.index / n as u64;
        self.index += 1;
        let day_ms = 86_400_000i64;
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
                let ts = 1_410_912_000_000 + step as i64 * day_ms; // from 2014-09-17
                let date = chrono_date(ts);
                let value = json!({
                    "Symbol": symbol, "Date": date, "Open": round(open), "High": round(high),
                    "Low": round(low), "Close": round(close), "Adj Close": round(close), "Volume": volume,
                });
                (symbol, value, ts)
            }
            Shape::Ticks => {
                let ts = 1_600_000_000_000 + step as i64 * 250;
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
}

#[async_trait]
impl Source for DatagenSource {
    async fn poll(&mut self, max: usize) -> Result<Option<Vec<SourceRecord>>, ConnectorError> {
        let config = &self.generator.config;
        let left = config.count.map(|c| c.saturating_sub(self.generator.index));
        if left == Some(0) {
            return Ok(None);
        }
        let mut take = left.map_or(max, |l| (l as usize).min(max));
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

    #[test]
    fn dates_are_civil_dates() {
        assert_eq!(chrono_date(0), "1970-01-01");
        assert_eq!(chrono_date(1_410_912_000_000), "2014-09-17");
        assert_eq!(chrono_date(951_782_400_000), "2000-02-29");
    }
}
