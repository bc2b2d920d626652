//! Topics as connectors see them: a partition ([`TopicPartition`]), a consumer's place in it
//! ([`PartitionOffset`]), a topic's layout ([`TopicSpec`]) and where a record lands
//! ([`partition_for_key`], Kafka's default partitioner, which every transport uses).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A partition of a topic.
pub type TopicPartition = (std::sync::Arc<str>, i32);

/// Where a consumer resumes in a partition: the offset of the next record to read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: i32,
    /// Next offset to read.
    pub offset: i64,
}

/// Layout of a topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Number of partitions.
    #[serde(default = "one")]
    pub partitions: i32,
    /// Copies of each partition (Kafka only).
    #[serde(default = "one")]
    pub replication_factor: i32,
    /// Topic configs passed to the broker at creation, e.g. `retention.ms: "86400000"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

impl Default for TopicSpec {
    fn default() -> Self {
        TopicSpec {
            partitions: 1,
            replication_factor: 1,
            config: BTreeMap::new(),
        }
    }
}

fn one() -> i32 {
    1
}

/// Kafka's default (Java client) partitioner: murmur2 of the key, made positive, modulo the
/// partition count. librdkafka is configured with `murmur2_random`, so both transports agree.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions as u32) as i32
}

/// Kafka's murmur2 hash (seed 0x9747b28c).
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Values from Kafka's `UtilsTest.testMurmur2`.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }

    #[test]
    fn the_same_key_always_lands_in_the_same_partition() {
        let p = partition_for_key(b"2014-09-17", 10);
        assert!((0..10).contains(&p));
        assert_eq!(p, partition_for_key(b"2014-09-17", 10));
    }
}
