//! Exactly-once delivery without broker transactions.
//!
//! With `exactly_once`, every record a source writes carries, in one header
//! ([`POSITION_HEADER`], `input:index:source`), its source partition (pipeline, component and
//! partition) and its place there (the source's position of the input it was made from, and
//! its index among the records made from that input). Within one topic partition the records
//! of one source partition arrive in the order they were sent (idempotent producer; the
//! embedded log keeps order too), so a store sink keeps, per (topic, partition, source), the
//! highest position it wrote — in the same store transaction as the data — and skips every
//! record at or below it: those are a restarted source sending again what an earlier run had
//! written. One header, not two: some brokers (tansu) store each header as a row of its own.
//!
//! Kafka's own transactions (KIP-98/KIP-618) would need a broker that serves `EndTxn`; this
//! needs only the idempotent producer every broker has.

use crate::Record;
use std::collections::HashMap;
use std::sync::Arc;

/// Header giving the record's [`Position`] and source partition, as `input:index:source` with
/// source `pipeline/component/partition`.
pub const POSITION_HEADER: &str = "sluice.position";

/// Longest source name in bytes; a longer one keeps its start and ends in a hash of the whole,
/// so it fits a store's key column.
pub const MAX_SOURCE_NAME: usize = 512;

/// A record's place in its source partition: ordered by input, then index.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Position {
    /// The source's position of the input (a byte offset, a row number, an event time): it
    /// grows from input to input and is the same for the same input on every run.
    pub input: u64,
    /// Which of the records made from that input (a transform may make several).
    pub index: u32,
}

impl Position {
    fn encode(self, source: &str) -> Vec<u8> {
        format!("{}:{}:{source}", self.input, self.index).into_bytes()
    }

    /// A header value: the position and the source name.
    fn parse(bytes: &[u8]) -> Option<(Self, &str)> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(3, ':');
        let input = parts.next()?.parse().ok()?;
        let index = parts.next()?.parse().ok()?;
        Some((Position { input, index }, parts.next()?))
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike std's hasher, so it can be stored.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The name of a source partition in [`POSITION_HEADER`], at most [`MAX_SOURCE_NAME`] bytes.
pub fn source_name(pipeline: &str, component: &str, partition: &str) -> String {
    let name = format!("{pipeline}/{component}/{partition}");
    if name.len() <= MAX_SOURCE_NAME {
        return name;
    }
    let hash = format!("#{:016x}", fnv1a(name.as_bytes()));
    let mut keep = MAX_SOURCE_NAME - hash.len();
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{hash}", &name[..keep])
}

/// Adds the exactly-once header to a record a source made.
pub fn stamp(record: &mut Record, source: &str, position: Position) {
    record
        .headers
        .push((POSITION_HEADER.to_string(), position.encode(source)));
}

/// The source partition and position a record carries, if it was written with
/// `exactly_once` (the last such header counts).
pub fn position_of(record: &Record) -> Option<(&str, Position)> {
    let (_, value) = record
        .headers
        .iter()
        .rev()
        .find(|(name, _)| name == POSITION_HEADER)?;
    let (position, source) = Position::parse(value)?;
    Some((source, position))
}

/// Where a sink keeps a highest position: topic, topic partition, source partition.
pub type PositionKey = (Arc<str>, i32, String);

/// The highest position a sink wrote, per [`PositionKey`], as committed in its store.
#[derive(Debug, Default)]
pub struct WrittenPositions {
    written: HashMap<PositionKey, Position>,
}

/// What [`WrittenPositions::screen`] found in a batch.
#[derive(Debug, Default, PartialEq)]
pub struct Screened {
    /// Per record of the batch: true when it is to be written, false when an earlier run wrote it.
    pub fresh: Vec<bool>,
    /// The highest position of the fresh records, per key: to store with them.
    pub advanced: HashMap<PositionKey, Position>,
    /// Records skipped.
    pub duplicates: usize,
}

impl WrittenPositions {
    /// A position read back from the store.
    pub fn insert(&mut self, key: PositionKey, position: Position) {
        self.written.insert(key, position);
    }

    /// Sorts a batch (in topic order) into records to write and records already written.
    /// Records without the header are always written.
    pub fn screen<R: std::borrow::Borrow<Record>>(&self, batch: &[R]) -> Screened {
        let mut screened = Screened {
            fresh: Vec::with_capacity(batch.len()),
            ..Screened::default()
        };
        // Consecutive records mostly share a key: its highest position so far is kept at hand.
        let mut current: Option<(PositionKey, Option<Position>)> = None;
        for record in batch.iter().map(R::borrow) {
            let Some((source, position)) = position_of(record) else {
                screened.fresh.push(true);
                continue;
            };
            let same = current
                .as_ref()
                .is_some_and(|((topic, partition, name), _)| {
                    Arc::ptr_eq(topic, &record.topic)
                        && *partition == record.partition
                        && name == source
                });
            if !same {
                if let Some((key, Some(highest))) = current.take() {
                    screened.advanced.insert(key, highest);
                }
                let key = (record.topic.clone(), record.partition, source.to_string());
                let highest = screened
                    .advanced
                    .get(&key)
                    .or_else(|| self.written.get(&key))
                    .copied();
                current = Some((key, highest));
            }
            let Some((_, highest)) = current.as_mut() else {
                continue;
            };
            if highest.is_some_and(|h| position <= h) {
                screened.fresh.push(false);
                screened.duplicates += 1;
            } else {
                *highest = Some(position);
                screened.fresh.push(true);
            }
        }
        if let Some((key, Some(highest))) = current {
            screened.advanced.insert(key, highest);
        }
        // Only positions that moved are stored again.
        screened
            .advanced
            .retain(|key, position| self.written.get(key) != Some(position));
        screened
    }

    /// Takes the positions of a batch once the store committed them.
    pub fn commit(&mut self, advanced: HashMap<PositionKey, Position>) {
        self.written.extend(advanced);
    }

    /// The positions held for `partitions`, as the store had them when last read or written.
    pub fn of(
        &self,
        partitions: &[crate::topic::TopicPartition],
    ) -> HashMap<PositionKey, Position> {
        self.written
            .iter()
            .filter(|((topic, partition, _), _)| {
                partitions
                    .iter()
                    .any(|(t, p)| **t == **topic && p == partition)
            })
            .map(|(key, position)| (key.clone(), *position))
            .collect()
    }

    /// Drops the positions of `partitions` (read again from the store when they come back).
    pub fn forget(&mut self, partitions: &[crate::topic::TopicPartition]) {
        self.written.retain(|(topic, partition, _), _| {
            !partitions
                .iter()
                .any(|(t, p)| **t == **topic && p == partition)
        });
    }
}

/// The partition of `record` among `partitions`, when it is fixed by the record: by its key
/// ([`partition_for_key`]), or, for a record without a key written with `exactly_once`, by its
/// source partition and input position. A record sent again after a crash must land where it
/// landed the first time, or a sink's stored position of that partition is wrong for it (it
/// would be skipped, or written twice); round-robin or random choices break that. `None`: the
/// transport may place it anywhere.
pub fn fixed_partition(record: &Record, partitions: i32) -> Option<i32> {
    if partitions <= 0 {
        return None;
    }
    if let Some(key) = &record.key {
        return Some(crate::topic::partition_for_key(key, partitions));
    }
    let (source, position) = position_of(record)?;
    let hash = fnv1a(format!("{}:{source}", position.input).as_bytes());
    Some((hash % partitions as u64) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &Arc<str>, partition: i32, source: &str, input: u64, index: u32) -> Record {
        let mut r = Record::new(serde_json::json!({ "at": input }));
        r.topic = topic.clone();
        r.partition = partition;
        stamp(&mut r, source, Position { input, index });
        r
    }

    #[test]
    fn records_at_or_below_the_written_position_are_skipped_per_partition_and_source() {
        let topic: Arc<str> = "t".into();
        let mut written = WrittenPositions::default();
        written.insert(
            (topic.clone(), 0, "p/a/f".into()),
            Position {
                input: 20,
                index: 0,
            },
        );
        let mut plain = Record::new(serde_json::json!(1));
        plain.topic = topic.clone();
        let batch = vec![
            record(&topic, 0, "p/a/f", 10, 0), // written by an earlier run
            record(&topic, 0, "p/a/f", 20, 0), // the last one written
            record(&topic, 0, "p/a/f", 20, 1), // a second record of that input
            record(&topic, 1, "p/a/f", 10, 0), // another topic partition
            record(&topic, 0, "p/a/g", 5, 0),  // another source partition
            record(&topic, 0, "p/a/f", 30, 0),
            record(&topic, 0, "p/a/f", 25, 0), // sent again within the batch
            plain,
        ];
        let screened = written.screen(&batch);
        assert_eq!(
            screened.fresh,
            vec![false, false, true, true, true, true, false, true]
        );
        assert_eq!(screened.duplicates, 3);
        let mut advanced: Vec<_> = screened.advanced.clone().into_iter().collect();
        advanced.sort();
        assert_eq!(
            advanced,
            vec![
                (
                    (topic.clone(), 0, "p/a/f".into()),
                    Position {
                        input: 30,
                        index: 0
                    }
                ),
                (
                    (topic.clone(), 0, "p/a/g".into()),
                    Position { input: 5, index: 0 }
                ),
                (
                    (topic.clone(), 1, "p/a/f".into()),
                    Position {
                        input: 10,
                        index: 0
                    }
                ),
            ]
        );
        written.commit(screened.advanced);
        let again = written.screen(&batch);
        assert_eq!(
            again.fresh,
            vec![false, false, false, false, false, false, false, true]
        );
        assert!(again.advanced.is_empty());
    }

    #[test]
    fn headers_round_trip_and_long_names_are_cut_with_a_hash() {
        let mut r = Record::new(serde_json::Value::Null);
        stamp(&mut r, "p/c/x", Position { input: 7, index: 2 });
        assert_eq!(
            position_of(&r),
            Some(("p/c/x", Position { input: 7, index: 2 }))
        );
        let long = "d/".repeat(400);
        let a = source_name("p", "c", &format!("{long}a.csv"));
        let b = source_name("p", "c", &format!("{long}b.csv"));
        assert_eq!(a.len(), MAX_SOURCE_NAME);
        assert_ne!(a, b);
        assert_eq!(source_name("p", "c", "f.csv"), "p/c/f.csv");
    }

    /// Sent again after a crash, a keyless record with `exactly_once` must land where it
    /// landed before; records made from different inputs still spread over the partitions.
    #[test]
    fn a_keyless_numbered_record_always_lands_in_the_same_partition() {
        let numbered = |input: u64| {
            let mut record = crate::Record::new(serde_json::json!({}));
            let position = Position { input, index: 0 };
            stamp(&mut record, "p/c/f", position);
            record
        };
        assert_eq!(
            fixed_partition(&crate::Record::new(serde_json::json!({})), 4),
            None
        );
        let at: Vec<i32> = (0..64)
            .map(|i| fixed_partition(&numbered(i), 4).unwrap())
            .collect();
        let again: Vec<i32> = (0..64)
            .map(|i| fixed_partition(&numbered(i), 4).unwrap())
            .collect();
        assert_eq!(at, again);
        assert!((0..4).all(|p| at.contains(&p)), "{at:?}");
    }
}
