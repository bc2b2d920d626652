//! What several sources share: reading a record time, remembering the ids delivered, and what
//! to do with rows that hold nothing.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashSet, VecDeque};

/// Epoch milliseconds of a record time: RFC 3339 text, or epoch seconds (below 10¹¹) or
/// milliseconds.
pub fn time_millis(value: &Value) -> Option<i64> {
    match value {
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis()),
        Value::Number(n) => {
            let v = n.as_f64()?;
            Some(if v.abs() < 1e11 {
                (v * 1000.0) as i64
            } else {
                v as i64
            })
        }
        _ => None,
    }
}

/// Ids delivered during this run, the last [`Recent::CAPACITY`] of them, kept as 128-bit
/// fingerprints (two seeded 64-bit hashes): a tenth the memory of the ids and no allocation per
/// record; two ids share one with a probability of about 10⁻²⁹ per window.
#[derive(Default)]
pub(crate) struct Recent {
    order: VecDeque<u128>,
    set: HashSet<u128, foldhash::fast::RandomState>,
    seeds: (foldhash::fast::RandomState, foldhash::fast::RandomState),
}

impl Recent {
    const CAPACITY: usize = 100_000;

    /// False when `id` was seen already.
    pub(crate) fn insert(&mut self, id: &str) -> bool {
        use std::hash::BuildHasher;
        let print =
            (u128::from(self.seeds.0.hash_one(id)) << 64) | u128::from(self.seeds.1.hash_one(id));
        if !self.set.insert(print) {
            return false;
        }
        if self.order.len() == Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(print);
        true
    }
}

/// What to do with rows that hold nothing but their key and time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NullRows {
    #[default]
    Keep,
    Skip,
    DeadLetter,
}
