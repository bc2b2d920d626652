//! Rounds of unique keys: a batch's writes are split so that each round touches a key at most
//! once. Rounds run one after the other, writes within a round in any order or at once, and
//! writes to one key still happen in batch order.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};

/// Counts the writes seen per key. Keys are told apart by a hash: a collision only puts a
/// write one round later than needed, which keeps the order.
#[derive(Default)]
pub(crate) struct Rounds {
    hasher: RandomState,
    seen: HashMap<u64, usize>,
}

impl Rounds {
    /// The round of the next write to `key`: 0 the first time, then 1, 2…
    pub fn of(&mut self, key: impl Hash) -> usize {
        let seen = self.seen.entry(self.hasher.hash_one(key)).or_insert(0);
        *seen += 1;
        *seen - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_write_to_a_key_goes_one_round_later() {
        let mut rounds = Rounds::default();
        let got: Vec<usize> = ["a", "b", "a", "c", "a", "b"]
            .iter()
            .map(|k| rounds.of(k))
            .collect();
        assert_eq!(got, [0, 0, 1, 0, 2, 1]);
    }
}
