//! `indicators`: moving averages, returns and rolling volatility of a numeric field, per key.
//! A stream transform: each input record is written again with the indicators added.
//!
//! Memory per key: the last `max(sma…, volatility… + 1)` values and one number per EMA
//! (8 bytes each). Cost per record: O(longest window) additions.

use crate::keyed::{config_error, json_number, number, Keyed, PerKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_api::stream::{Emitted, StreamOperator, StreamTransformConfig};
use sluice_api::{ConnectorError, FieldError, Record};
use std::collections::VecDeque;

/// Adds indicators of `field` to every record, computed over the key's records so far (in
/// partition order): `sma_<n>` (mean of the last n values), `ema_<n>` (exponential moving
/// average, factor 2/(n+1), started at the first value), `return` and `log_return` (against
/// the previous value), `volatility_<n>` (sample standard deviation of the last n log
/// returns). An indicator without enough values yet is null. Memory: per key the values of the
/// longest window (8 bytes each); cost per record: O(longest window) additions.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IndicatorsConfig {
    /// The numeric field (e.g. `Close`). A record without it is a bad record.
    pub field: String,
    /// Simple moving average lengths, e.g. `[7, 30]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sma: Vec<usize>,
    /// Exponential moving average lengths, e.g. `[12, 26]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ema: Vec<usize>,
    /// Add `return` and `log_return` (default true).
    #[serde(default = "yes")]
    pub returns: bool,
    /// Rolling volatility lengths (log returns), e.g. `[30]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volatility: Vec<usize>,
    /// Prefix of the added fields (default none: `sma_7`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
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

/// The state of one key.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KeyState {
    /// The latest values, oldest first.
    values: VecDeque<f64>,
    /// Per `ema` length, its current value.
    ema: Vec<f64>,
}

struct Indicators {
    config: IndicatorsConfig,
    /// Values kept per key.
    keep: usize,
}

impl IndicatorsConfig {
    fn operator(&self) -> Result<Indicators, Vec<FieldError>> {
        let mut errors = Vec::new();
        for (name, lengths, least) in [
            ("sma", &self.sma, 1),
            ("ema", &self.ema, 1),
            ("volatility", &self.volatility, 2),
        ] {
            if let Some(n) = lengths.iter().find(|n| **n < least) {
                errors.push(FieldError::new(
                    name,
                    format!("{n} is too short: at least {least}"),
                ));
            }
        }
        if self.sma.is_empty() && self.ema.is_empty() && self.volatility.is_empty() && !self.returns
        {
            errors.push(FieldError::new(
                "sma",
                "no indicator asked for: give sma, ema, volatility or returns",
            ));
        }
        let keep = self
            .sma
            .iter()
            .copied()
            .chain(self.volatility.iter().map(|n| n + 1))
            .chain([2])
            .max()
            .unwrap_or(2);
        if errors.is_empty() {
            Ok(Indicators {
                config: self.clone(),
                keep,
            })
        } else {
            Err(errors)
        }
    }
}

#[sluice_api::stream_transform("indicators")]
impl StreamTransformConfig for IndicatorsConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        self.operator().map(|_| ())
    }

    fn build(&self) -> Result<Box<dyn StreamOperator>, ConnectorError> {
        self.operator()
            .map(|i| Box::new(Keyed::new(i, self.idle_key_ttl)) as Box<dyn StreamOperator>)
            .map_err(config_error)
    }
}

impl PerKey for Indicators {
    type State = KeyState;

    fn process(&self, _key: &str, state: &mut KeyState, record: &Record) -> Emitted {
        // The output is the record again, with the indicators added.
        let mut record = record.clone();
        let c = &self.config;
        let x = match number(&record, &c.field) {
            Ok(x) => x,
            Err(e) => return Emitted::refused(e),
        };
        let Value::Object(fields) = &mut record.value else {
            return Emitted::refused("the value is not an object");
        };
        let previous = state.values.back().copied();
        state.values.push_back(x);
        while state.values.len() > self.keep {
            state.values.pop_front();
        }
        let name = |what: &str| format!("{}{what}", c.prefix);
        let values = &state.values;
        for &n in &c.sma {
            let sma =
                (values.len() >= n).then(|| values.iter().rev().take(n).sum::<f64>() / n as f64);
            fields.insert(
                name(&format!("sma_{n}")),
                sma.map_or(Value::Null, json_number),
            );
        }
        if state.ema.len() != c.ema.len() {
            state.ema = vec![x; c.ema.len()];
        }
        for (&n, ema) in c.ema.iter().zip(&mut state.ema) {
            let k = 2.0 / (n as f64 + 1.0);
            *ema += k * (x - *ema);
            fields.insert(name(&format!("ema_{n}")), json_number(*ema));
        }
        if c.returns {
            let (ret, log_ret) = match previous {
                Some(p) if p != 0.0 => (json_number(x / p - 1.0), json_number((x / p).ln())),
                _ => (Value::Null, Value::Null),
            };
            fields.insert(name("return"), ret);
            fields.insert(name("log_return"), log_ret);
        }
        for &n in &c.volatility {
            let volatility = (values.len() > n).then(|| {
                let returns: Vec<f64> = values
                    .iter()
                    .rev()
                    .take(n + 1)
                    .collect::<Vec<_>>()
                    .windows(2)
                    .map(|w| (w[0] / w[1]).ln())
                    .collect();
                let mean = returns.iter().sum::<f64>() / n as f64;
                (returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt()
            });
            fields.insert(
                name(&format!("volatility_{n}")),
                volatility.map_or(Value::Null, json_number),
            );
        }
        Emitted {
            records: vec![record],
            rejected: None,
        }
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

    #[test]
    fn indicators_are_exact_and_null_until_there_are_enough_values() {
        let config: IndicatorsConfig =
            serde_yaml::from_str("field: Close\nsma: [2]\nema: [3]\nvolatility: [2]").unwrap();
        let mut op = config.build().unwrap();
        let mut out = Vec::new();
        for (key, close) in [("A", 100.0), ("B", 10.0), ("A", 110.0), ("A", 99.0)] {
            let e = op.process(&tp(), &Record::new(json!({"Close": close})).with_key(key));
            out.push(e.records[0].value.clone());
        }
        assert_eq!(out[0]["sma_2"], Value::Null);
        assert_eq!(out[0]["return"], Value::Null);
        assert_eq!(out[0]["ema_3"], 100.0);
        // Key B is its own series.
        assert_eq!(out[1]["ema_3"], 10.0);
        assert_eq!(out[1]["sma_2"], Value::Null);
        assert_eq!(out[2]["sma_2"], 105.0);
        assert_eq!(out[2]["ema_3"], 105.0);
        assert!((out[2]["return"].as_f64().unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(out[2]["volatility_2"], Value::Null);
        assert_eq!(out[3]["sma_2"], 104.5);
        assert_eq!(out[3]["ema_3"], 102.0);
        let (r1, r2) = ((110.0f64 / 100.0).ln(), (99.0f64 / 110.0).ln());
        let mean = (r1 + r2) / 2.0;
        let sd = (((r1 - mean).powi(2) + (r2 - mean).powi(2)) / 1.0).sqrt();
        assert!((out[3]["volatility_2"].as_f64().unwrap() - sd).abs() < 1e-12);
        assert_eq!(out[3]["Close"], 99.0);
    }

    #[test]
    fn bad_input_and_configs_are_named() {
        let config: IndicatorsConfig =
            serde_yaml::from_str("field: Close\nvolatility: [1]").unwrap();
        assert_eq!(config.validate().unwrap_err()[0].field, "volatility");
        let config: IndicatorsConfig = serde_yaml::from_str("field: Close\nsma: [3]").unwrap();
        let mut op = config.build().unwrap();
        let e = op.process(&tp(), &Record::new(json!({"Close": "n/a"})));
        assert!(e.rejected.unwrap().contains("not a number"));
    }
}
