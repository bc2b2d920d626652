//! What a window computes: `first`, `last`, `min`, `max`, `sum`, `avg`, `count` of a field, and the accumulators that hold them between records.

use super::*;

/// One aggregate: what it computes, over which field.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Aggregate {
    pub(super) output: String,
    pub(super) op: Op,
    pub(super) field: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    First,
    Last,
    Stddev,
}

pub(super) fn parse_aggregate(output: &str, spec: &str) -> Result<Aggregate, String> {
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
pub(super) enum Acc {
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
    pub(super) fn new(op: Op) -> Self {
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
    pub(super) fn add(&mut self, op: Op, value: Option<&Value>, number: Option<f64>, time: i64) {
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

    pub(super) fn result(&self) -> Value {
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
